"""Export a trained run: the merged plain model and the small SVF artifact.

``model.pt`` is the state dict of the method's plain network (every SVF layer merged into a Conv2d with
W = U diag(s) V^T), loadable without svfseg's SVF layers; ``svf.pt`` holds the trained SVF tensors of the
backbone and the fingerprint of the weights they were converted from; ``run.json`` names the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from svfseg.files import atomic_write
from svfseg.inference.predictor import resolve_checkpoint
from svfseg.lightning.checkpointing import load_checkpoint_dict
from svfseg.lightning.module import FewShotSegModule
from svfseg.models.base import FewShotModel
from svfseg.models.factory import build_fewshot_model
from svfseg.run_spec import RunSpec
from svfseg.svf import merge_svf, svf_layers, svf_state_dict

MODEL_FILE, SVF_FILE, RUN_FILE = "model.pt", "svf.pt", "run.json"


def export_run(ckpt_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``model.pt``, ``svf.pt`` (SVF runs only) and ``run.json`` under ``out_dir``; returns run.json."""
    ckpt = resolve_checkpoint(ckpt_path)
    load_checkpoint_dict(ckpt)
    module = FewShotSegModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    model = module.model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_svf = next(svf_layers(model.backbone), None) is not None
    files = {"model": MODEL_FILE}
    if has_svf:
        svf_state = svf_state_dict(model.backbone)
        atomic_write(out / SVF_FILE, lambda tmp: torch.save(svf_state, tmp))
        files["svf"] = SVF_FILE
    merged = merge_svf(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_write(out / MODEL_FILE, lambda tmp: torch.save(state, tmp))
    record = {
        "checkpoint": str(ckpt),
        "run": module.spec.to_dict(),
        "identity": module.spec.identity(),
        "eval_size": (module.run_config or {}).get("dataset", {}).get("eval_size"),
        "merged_svf_layers": len(merged),
        "files": files,
    }
    atomic_write(out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return record


def load_exported(export_dir: str | Path, *, device: str = "cpu") -> FewShotModel:
    """The plain network of an export, weights loaded strictly (every key, every shape), in eval mode."""
    folder = Path(export_dir)
    run_file, model_file = folder / RUN_FILE, folder / MODEL_FILE
    for path in (run_file, model_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: export with python -m svfseg.svf export CKPT --out {folder}"
            )
    spec = RunSpec.from_dict(json.loads(run_file.read_text())["run"])
    model = build_fewshot_model(dict(spec.method), dict(spec.backbone), fold=spec.fold, load_pretrained=False)
    state = torch.load(model_file, map_location=device, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
