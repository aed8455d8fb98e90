"""Export a trained run: the merged plain model and the small adapter artifact.

    python -m svfseg.inference.export CKPT --out DIR [--force]      (or: svfseg-export CKPT --out DIR)

``model.pt`` is the state dict of the method's plain network (every SVF layer merged into a Conv2d with
W = U diag(s) V^T, every LoRA / DoRA adapter folded into its layer), loadable without svfseg's SVF layers
or peft; ``svf.pt`` (SVF, LoRA and DoRA runs) holds the trained adapter tensors of the backbone and the
fingerprints of the weights they were trained on (``svfseg.svf.adapter_state_dict``); ``run.json``
names the network.

An export goes into a new or empty folder; ``force`` replaces a previous export there, and only that.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from svfseg.files import atomic_write_all, is_temp_of, read_tensor_file, torch_save
from svfseg.finetune.adapters import lora_layers, merge_lora
from svfseg.inference.predictor import resolve_checkpoint
from svfseg.lightning.checkpointing import load_checkpoint_dict
from svfseg.lightning.module import FewShotSegModule
from svfseg.messages import preview
from svfseg.methods.base import FewShotModel
from svfseg.methods.factory import build_fewshot_model
from svfseg.run_spec import RunSpec
from svfseg.svf import adapter_state_dict, merge_svf, svf_layers

MODEL_FILE, SVF_FILE, RUN_FILE = "model.pt", "svf.pt", "run.json"
EXPORT_FILES = (MODEL_FILE, SVF_FILE, RUN_FILE)  # every file an export writes; the only ones --force replaces


class ExportFolderError(ValueError):
    """``--out`` holds files that the export would overwrite or leave mixed with its own."""


def _is_export_file(name: str) -> bool:
    """An export's own file, or the temporary file of one left by an export that was killed."""
    return name in EXPORT_FILES or any(is_temp_of(name, own) for own in EXPORT_FILES)


def _is_export_record(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get("files"), dict) and "run" in record


def check_export_folder(out_dir: str | Path, *, force: bool = False) -> list[Path]:
    """Refuse an ``--out`` folder the export would overwrite files in; returns the files ``--force`` replaces.

    * missing or empty: fine (nothing to replace);
    * not empty, without ``force``: refused, naming the folder, its files and ``--force``;
    * with ``force``: it may hold only a previous export's files (``model.pt``, ``svf.pt``, ``run.json``,
      where ``run.json`` is an export's record, and temporary files of a killed export). Any other file
      or folder is refused even with ``force``: an export never deletes or overwrites what is not its
      own, and never leaves its files mixed with others.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportFolderError(f"--out {out} is a file, not a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not names:
        return []
    if not force:
        raise ExportFolderError(
            f"--out {out} is not empty ({preview(names)}): export writes {', '.join(EXPORT_FILES)} "
            "into an empty or new folder. Choose another --out, or pass --force to replace a previous "
            "export there (only its model.pt, svf.pt and run.json; other files are never touched)"
        )
    foreign = [name for name in names if not _is_export_file(name) or (out / name).is_dir()]
    run_file = out / RUN_FILE
    if run_file.is_file() and not _is_export_record(run_file):
        foreign.append(f"{RUN_FILE} (not an export's record)")
    if foreign:
        raise ExportFolderError(
            f"--out {out} holds files that are not a previous export's: {preview(foreign)}. --force "
            f"replaces only an export's own files ({', '.join(EXPORT_FILES)}) and never deletes others; "
            "move them away or choose another --out"
        )
    return [out / name for name in names]


def export_run(ckpt_path: str | Path, out_dir: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Write ``model.pt``, ``svf.pt`` (SVF, LoRA and DoRA runs) and ``run.json`` under ``out_dir``; returns run.json.

    ``out_dir`` must be new or empty; with ``force`` it may hold a previous export, whose files are all
    replaced: a file of it that this export does not write (``svf.pt`` of an SVF export under a freeze
    export) is removed (see :func:`check_export_folder`). The new files are written in full before any
    of them replaces an old one, so a failed export (a full disk) keeps the previous export as it was.
    """
    previous = check_export_folder(out_dir, force=force)
    ckpt = resolve_checkpoint(ckpt_path)
    load_checkpoint_dict(ckpt)
    module = FewShotSegModule.load_from_checkpoint(
        ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )
    model = module.model.eval()
    out = Path(out_dir)
    has_svf = next(svf_layers(model.backbone), None) is not None
    has_lora = next(lora_layers(model.backbone), None) is not None
    files = {"model": MODEL_FILE}
    # svf_state_dict is adapter_state_dict for a model with SVF layers: every trained backbone tensor
    svf_state = adapter_state_dict(model.backbone) if has_svf or has_lora else None
    if svf_state is not None:
        files["svf"] = SVF_FILE
    merged = merge_svf(model)
    merged_lora = merge_lora(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = {
        "checkpoint": str(ckpt),
        "run": module.spec.to_dict(),
        "identity": module.spec.identity(),
        "eval_size": (module.run_config or {}).get("dataset", {}).get("eval_size"),
        "merged_svf_layers": len(merged),
        "merged_lora_layers": len(merged_lora),
        "files": files,
    }
    writes: dict[Path, Callable[[Path], None]] = {}
    if svf_state is not None:
        writes[out / SVF_FILE] = lambda tmp: torch_save(svf_state, tmp)
    writes[out / MODEL_FILE] = lambda tmp: torch_save(state, tmp)
    writes[out / RUN_FILE] = lambda tmp: tmp.write_text(json.dumps(record, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_all(writes)
    for stale in previous:  # the previous export's files this one did not write (and killed temp files)
        if stale not in writes:
            stale.unlink(missing_ok=True)
    return record


def load_exported(export_dir: str | Path, *, device: str = "cpu") -> FewShotModel:
    """The plain network of an export, weights loaded strictly (every key, every shape), in eval mode."""
    folder = Path(export_dir)
    run_file, model_file = folder / RUN_FILE, folder / MODEL_FILE
    for path in (run_file, model_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: export with python -m svfseg.inference.export CKPT --out {folder}"
            )
    spec = RunSpec.from_dict(json.loads(run_file.read_text())["run"])
    model = build_fewshot_model(dict(spec.method), dict(spec.backbone), fold=spec.fold, load_pretrained=False)
    state = read_tensor_file(
        model_file,
        error=ValueError,
        what="an exported model",
        fix=f"export again with python -m svfseg.inference.export CKPT --out {folder}",
        map_location=device,
    )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m svfseg.inference.export CKPT --out DIR [--force]``: 0 on success, 2 on a refused input."""
    parser = argparse.ArgumentParser(
        prog="python -m svfseg.inference.export",
        description="write DIR/model.pt (merged, plain convs), DIR/svf.pt, DIR/run.json of a trained run",
    )
    parser.add_argument("ckpt", help="a train.py checkpoint or run directory")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a previous export in --out (its model.pt, svf.pt, run.json; a stale svf.pt is "
        "removed); a folder holding any other file is still refused",
    )
    args = parser.parse_args(argv)
    try:
        record = export_run(args.ckpt, args.out, force=args.force)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **record["files"], "merged_svf_layers": record["merged_svf_layers"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
