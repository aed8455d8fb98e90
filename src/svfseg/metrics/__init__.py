"""Few-shot segmentation metrics: class-wise mIoU and FB-IoU with exact, shard-invariant integer states."""

from svfseg.labels import IGNORE_INDEX
from svfseg.metrics.counts import episode_counts
from svfseg.metrics.fewshot_iou import FewShotIoU
from svfseg.metrics.original_size import predict_at_original_size

__all__ = ["IGNORE_INDEX", "FewShotIoU", "episode_counts", "predict_at_original_size"]
