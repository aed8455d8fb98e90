"""Few-shot segmentation data at run time: folds, lists, episodes, transforms, collate, DataModules.

The batch keys are :mod:`svfseg.data.batch`; the offline dataset tools live in :mod:`svfseg.dataprep`.
"""

import cv2 as _cv2

# One OpenCV thread per process, set before any OpenCV call. DataLoader workers are forked: calling
# cv2.setNumThreads inside a forked worker after the parent has started OpenCV's thread pool deadlocks
# (seen as an evaluation that hangs forever), and the loader processes already use the cores.
_cv2.setNumThreads(1)
