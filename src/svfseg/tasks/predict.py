"""predict.py's logic: check every input, then segment the queries and write masks, overlays and a record."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from svfseg.config_checks import check_writable_dir
from svfseg.data.job_progress import progress_bar
from svfseg.inference import PredictionWriter, Predictor, check_queries, expand_queries, read_supports
from svfseg.inference.inputs import PredictInputError, check_support_class
from svfseg.inference.predictor import pick_device
from svfseg.precision import apply_matmul_precision
from svfseg.run_dir import save_hydra_record
from svfseg.tasks.builders import plain

log = logging.getLogger(__name__)


def _paths(value: Any) -> list[str]:
    value = plain(value)
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment ``cfg.query`` from ``cfg.support``; returns the ``predictions.json`` record.

    Every input (checkpoint, device, supports, masks, queries, output folder) is checked before anything
    is written, so a bad one leaves no partial output; it raises :class:`PredictInputError` naming the file.
    """
    out = Path(str(cfg.paths.output_dir))
    try:  # a refused input is a PredictInputError: predict.py prints it and exits 2, as train.py does
        check_writable_dir(out, "paths.output_dir")
        device = str(cfg.get("device", "auto"))
        pick_device(device)  # before any image is decoded
        apply_matmul_precision(str(cfg.get("matmul_precision", "highest")))
        support_class = check_support_class(cfg.get("support_class"))
        supports = read_supports(_paths(cfg.support), _paths(cfg.support_masks), support_class)
        queries = expand_queries(_paths(cfg.query))
        check_queries(queries)
        predictor = Predictor.from_checkpoint(
            str(cfg.ckpt_path), device=device, merge=bool(cfg.get("merge_svf", True))
        )
        note = predictor.check_shot(len(supports))
    except PredictInputError:
        raise
    except (ValueError, FileNotFoundError) as err:  # the output folder, the checkpoint, the device
        raise PredictInputError(str(err)) from err
    save_hydra_record(out, cfg)  # every input passed its check
    writer = PredictionWriter(out, queries, mask_values=str(cfg.get("mask_values", "binary")))
    with progress_bar("predict", len(queries), enabled=bool(cfg.get("progress", True))) as advance:
        for prediction in predictor.predict(supports, queries, batch_size=int(cfg.get("batch_size", 4))):
            writer.write(prediction)
            advance(1)
    path = writer.finish(supports, {**predictor.describe(), "shot_note": note})
    print(f"wrote {len(queries)} masks and overlays under {out} ({path.name})")
    log.info("wrote %s", path)
    return {"predictions": str(path), "n_queries": len(queries), "k": len(supports)}
