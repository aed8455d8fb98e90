"""Evaluate a checkpoint on fixed episodes and write metrics.json in the run directory. Examples:

python eval.py ckpt_path=outputs/train/.../checkpoints/best.ckpt
python eval.py ckpt_path=outputs/train/<run dir>        # its checkpoints/best.ckpt (else last.ckpt)
python eval.py ckpt_path=... n_episodes=5000 seeds=[321,510,365,382,988]
python eval.py ckpt_path=... trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    from svfseg.config_checks import ConfigError, report_config_problems
    from svfseg.data.episodes import EpisodeDataError
    from svfseg.run_dir import is_global_rank_zero, remove_rank_folder
    from svfseg.tasks.evaluate import evaluate

    hydra_cfg = HydraConfig.get()
    sweep_job = hydra_cfg.mode == RunMode.MULTIRUN  # a refused job must not end the sweep
    try:
        miou = float(evaluate(cfg)["miou"])
    except ConfigError as err:  # every start-up problem, one line each, no traceback; exit status 2
        from svfseg.run_dir import remove_if_empty

        remove_if_empty(Path(hydra_cfg.runtime.output_dir), stop=Path.cwd())  # made by Hydra, empty
        report_config_problems(err, "eval.py", sweep_job=sweep_job)
    except EpisodeDataError as err:  # found when the episodes are built: no traceback either
        report_config_problems(err, "eval.py", what="in the data, nothing was evaluated", sweep_job=sweep_job)
    if not is_global_rank_zero():  # rank 0 wrote the results; a folder of this rank's own holds its log only
        remove_rank_folder(Path(hydra_cfg.runtime.output_dir), f"{hydra_cfg.job.name}.log", stop=Path.cwd())
    return miou


if __name__ == "__main__":
    main()
