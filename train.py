"""Train a few-shot segmentation model. Examples:

python train.py method=bam backbone=resnet50 finetune=svf dataset=coco fold=2
python train.py -m finetune=freeze,full,svf fold=0,1,2,3
python train.py stage=base method=bam dataset=pascal fold=0      # BAM stage 1 (base learner)
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from svfseg.tasks.train import train

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    metrics = train(cfg, multirun=multirun)
    value = metrics.get(str(cfg.optimized_metric).split("/")[-1]) if metrics else None
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
