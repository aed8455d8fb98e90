"""Errors raised by the SVF core, kept apart so every module can import them without cycles."""

from __future__ import annotations


class SVFSelectionError(ValueError):
    """``apply_svf`` was asked for a layer selection that cannot be honoured (no match, typo, re-conversion)."""


class SVFStateError(RuntimeError):
    """An SVF checkpoint or layer state does not belong to the model it is loaded into."""


class NoSVFLayerError(SVFSelectionError, SVFStateError):
    """A module holds no SVF layer where one is needed (``require_svf_layers``): convert it first.

    Both a selection error (a ``ValueError``) and a state error (a ``RuntimeError``): an SVF tool
    raised one of them here before this error existed, and code that catches either still does.
    """
