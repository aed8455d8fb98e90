"""Saving figures as small PNGs: plots go into READMEs, reports and W&B, where size matters."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from svfseg.files import atomic_write


def save_png(fig: Figure, path: str | Path, *, dpi: int = 100, colours: int = 256) -> Path:
    """Render ``fig`` and write it as a palette PNG of at most ``colours`` colours (a few times smaller
    than matplotlib's RGBA output for heatmaps, with no visible change at that palette size).

    The file is written atomically: a failed write (a full disk) keeps the previous PNG whole."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.FASTOCTREE)
        path = Path(path)
        atomic_write(path, lambda tmp: palette.save(tmp, format="PNG", optimize=True))
    return path
