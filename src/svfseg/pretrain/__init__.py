"""Proxy pretraining: backbone weights made on this machine, where ImageNet weights cannot be fetched.

``python -m svfseg.pretrain`` writes an ordinary PSPNet-v2-layout weight file for
``backbone.pretrained=<file>``; :func:`build_proxy_weights` is the same from Python.
"""

from svfseg.pretrain.proxy import ProxyResult, ProxySpec, ProxyWeightsError, build_proxy_weights, read_record
from svfseg.pretrain.proxy_data import proxy_styles

__all__ = [
    "ProxyResult",
    "ProxySpec",
    "ProxyWeightsError",
    "build_proxy_weights",
    "proxy_styles",
    "read_record",
]
