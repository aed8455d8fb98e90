"""Segment your own images from k annotated examples with a trained checkpoint. Examples:

python predict.py ckpt_path=outputs/train/.../checkpoints/best.ckpt \
    'support=[s1.jpg,s2.jpg]' 'support_masks=[s1.png,s2.png]' query=my_photos/
python predict.py ckpt_path=RUN_DIR support=[s.jpg] support_masks=[s_classes.png] support_class=15 \
    'query=images/*.jpg' mask_values=255 device=cuda
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from svfseg.config_checks import report_config_problems
    from svfseg.inference import PredictInputError
    from svfseg.run_dir import remove_if_empty
    from svfseg.tasks.predict import predict

    try:
        predict(cfg)
    except PredictInputError as err:  # a refused input, named with its fix: one line, no traceback, exit 2
        remove_if_empty(Path(HydraConfig.get().runtime.output_dir), stop=Path.cwd())
        report_config_problems(err, "predict.py")
    except Exception:  # Hydra made the folder; nothing was written into it
        remove_if_empty(Path(HydraConfig.get().runtime.output_dir), stop=Path.cwd())
        raise


if __name__ == "__main__":
    main()
