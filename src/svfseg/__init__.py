"""svfseg: Singular Value Fine-tuning (Sun et al., NeurIPS 2022) for few-shot semantic segmentation."""

__version__ = "0.1.0"
