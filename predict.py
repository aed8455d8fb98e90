"""Segment your own images from k annotated examples with a trained checkpoint. Examples:

python predict.py ckpt_path=outputs/train/.../checkpoints/best.ckpt \
    'support=[s1.jpg,s2.jpg]' 'support_masks=[s1.png,s2.png]' query=my_photos/
python predict.py ckpt_path=RUN_DIR support=[s.jpg] support_masks=[s_classes.png] support_class=15 \
    'query=images/*.jpg' mask_values=255 device=cuda
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from svfseg.tasks.predict import predict

    predict(cfg)


if __name__ == "__main__":
    main()
