"""Train a few-shot segmentation model. Examples:

python train.py method=bam backbone=resnet50 finetune=svf dataset=coco fold=2
python train.py -m finetune=freeze,full,svf fold=0,1,2,3
python train.py stage=base method=bam dataset=pascal fold=0      # BAM stage 1 (base learner)
python train.py -m hydra/launcher=slurm_4gpu trainer=ddp experiment=table1/resnet50_baseline_svf fold=0,1,2,3
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from svfseg.run_dir import register_resolvers

register_resolvers()  # ${svfseg_run_hash:} in the run directory (conf/hydra/default.yaml)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from svfseg.config_checks import ConfigError, report_config_problems
    from svfseg.data.episodes import EpisodeDataError
    from svfseg.tasks.train import train

    hydra_cfg = HydraConfig.get()
    # A SLURM launcher runs each sweep job as its own job, whose tasks Lightning joins as DDP ranks; any
    # other multirun would have every DDP rank start the sweep again.
    slurm = "SlurmLauncher" in str(hydra_cfg.launcher.get("_target_", ""))
    sweep_job = hydra_cfg.mode == RunMode.MULTIRUN  # a refused job must not end the sweep
    multirun = sweep_job and not slurm
    try:
        metrics = train(cfg, multirun=multirun)
    except ConfigError as err:  # every problem of the config, one line each, no traceback; exit status 2
        from svfseg.run_dir import remove_if_empty

        remove_if_empty(Path(hydra_cfg.runtime.output_dir), stop=Path.cwd())  # Hydra made it; nothing in it
        report_config_problems(err, "train.py", sweep_job=sweep_job)
    except EpisodeDataError as err:  # found when the lists are built, at fit start: no traceback either
        report_config_problems(err, "train.py", what="in the data, nothing was trained", sweep_job=sweep_job)
    value = metrics.get(str(cfg.optimized_metric).split("/")[-1]) if metrics else None
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
