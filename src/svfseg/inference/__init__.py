"""Using a trained model: segment your own images from k annotated examples, and export it.

predictor = Predictor.from_checkpoint("outputs/train/.../checkpoints/best.ckpt")
supports = read_supports(["cat.jpg"], ["cat.png"])          # non-zero mask pixels = foreground
for p in predictor.predict(supports, expand_queries("photos/")):
    print(p.path, p.mask.shape, p.foreground_fraction)      # mask at the query's original size
"""

from svfseg.inference.inputs import (
    PredictInputError,
    Support,
    check_queries,
    episode_mask,
    expand_queries,
    read_supports,
)
from svfseg.inference.outputs import PredictionWriter, overlay
from svfseg.inference.predictor import Prediction, Predictor
from svfseg.lightning.checkpointing import resolve_checkpoint

__all__ = [
    "PredictInputError",
    "Prediction",
    "PredictionWriter",
    "Predictor",
    "Support",
    "check_queries",
    "episode_mask",
    "expand_queries",
    "overlay",
    "read_supports",
    "resolve_checkpoint",
]
