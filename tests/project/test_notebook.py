"""The analysis notebook runs top to bottom in a real kernel on the checkpoint of a tiny SVF run.

The notebook is parameterised by environment variables (its first, ``parameters``-tagged cell), which
the kernel inherits from this process. tests/analysis/test_analysis.py checks the figures' content on a model
with known singular-value changes; this test checks the notebook as a user runs it: load the
checkpoint, read an image of the run's own dataset, read the run's CSV log, draw and save every figure.
"""

from __future__ import annotations

import base64
import csv
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "svf_analysis.ipynb"
FIGURES = {
    "fig8_layer3_3x3",
    "fig10_layer2_3x3",
    "fig9_layer3_1x1",
    "fig11_layer2_1x1",
    "fig5_cues_layer3_last_3x3",
    "fig6_cues_layer3_last_1x1",
    "miou_curves",
}


@pytest.mark.slow
def test_notebook_executes_on_a_trained_svf_checkpoint(
    synthetic_pascal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, min_pixels = synthetic_pascal
    run = tmp_path / "run"
    cfg = tiny_train_config(
        root,
        run,
        min_pixels=min_pixels,
        extra=["finetune=svf", "trainer.max_epochs=2", "test_after_fit=false"],
    )
    train(cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    image = sorted((Path(root) / "JPEGImages").glob("*.jpg"))[0]
    out = tmp_path / "figures"
    monkeypatch.setenv("SVFSEG_CKPT", str(ckpt))
    monkeypatch.delenv("SVFSEG_RUN_DIRS", raising=False)  # default: the checkpoint's own run
    # relative to the dataset root recorded in the checkpoint, as the notebook's default is
    monkeypatch.setenv("SVFSEG_IMAGE", f"JPEGImages/{image.name}")
    monkeypatch.setenv("SVFSEG_ANALYSIS_OUT", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == len(FIGURES)  # spectra (4), cues (2), curves (1): the three analyses
    saved = {p.stem: p for p in out.glob("*.png")}
    assert set(saved) == FIGURES
    # what the notebook displays is the file it saved
    assert sorted(base64.b64decode(p) for p in pngs) == sorted(p.read_bytes() for p in saved.values())
    for path in saved.values():
        pixels = cv2.imread(str(path))
        assert pixels is not None and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert float(np.std(pixels)) > 1.0  # not a blank canvas

    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # svf_summary and the per-stage statistics name the converted stages
    for stage in ("layer2", "layer3", "layer4"):
        assert f"{stage}:" in text
    # two epochs in the run's CSV log: the curve cell read the same file the test reads
    with (run / "csv" / "metrics.csv").open() as fh:
        epochs = {r["epoch"] for r in csv.DictReader(fh) if r.get("val/miou")}
    assert epochs == {"0", "1"}
    assert f"figures saved under {out.resolve()}" in text
