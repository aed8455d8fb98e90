"""``make demo`` (real photos: CCP with ImageNet EfficientNet-Lite0) and ``make demo-synthetic``.

``python -m svfseg.demo`` runs the real-photo demo (:mod:`svfseg.demo.real`); ``--synthetic`` runs the
self-contained synthetic one (:mod:`svfseg.demo.synthetic`), which needs no download.
"""

from svfseg.demo.common import summarise
from svfseg.demo.synthetic import DISCLAIMER, STRATEGIES, DemoSettings, comparison_rows, run_demo

__all__ = ["DISCLAIMER", "STRATEGIES", "DemoSettings", "comparison_rows", "run_demo", "summarise"]
