"""Getting weight files into the layouts svfseg's configs expect (``python -m svfseg.weights``).

* :mod:`~svfseg.weights.bam_import`: BAM's released stage-1 PSPNet checkpoints -> svfseg base-learner files.
"""
