"""Offline dataset tools: they write or check datasets on disk, run once before training.

``prepare`` (Pascal, COCO, the folder check, CCP, resize), ``synthetic`` (generated datasets), ``ccp``
(Clothing Co-Parsing converter), ``folder_check`` (full check and default folds of a dataset folder) and
``folder_resize``. Nothing of the runtime (:mod:`svfseg.data`, the LightningModules) imports them, which
keeps scipy and pycocotools out of training and evaluation.
"""
