"""Loading a trained SVF checkpoint: what eval.py, the analysis helpers and the notebook pay at start-up.

    python benchmarks/bench_load.py [--method baseline] [--repeats 3] [--write docs/benchmarks.md]

A full-width ResNet-50 run with ``finetune=svf`` (layer2-4 converted: 42 conv layers) is saved as a
Lightning checkpoint in a temporary folder, then loaded two ways, interleaved in one process so machine
noise hits both alike:

* ``from shapes`` (svfseg now): ``FewShotSegModule.load_from_checkpoint``; the strategy builds its SVF
  layers from the convs' shapes with zero factors and no SVD, and the state dict fills them.
* ``with SVD`` (how loading worked before): the same module, the strategy applied with one float64 SVD
  per converted layer, then the state dict overwrites every factor the SVDs produced.

Both end with identical tensors (checked). Reported: median (min) seconds of ``--repeats`` rounds, and
for scale the part of eval.py's start-up that did not change: importing its modules in a fresh process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from benchlib import write_section

from svfseg.data.fold import FoldSpec
from svfseg.lightning.module import FewShotSegModule
from svfseg.run_spec import RunSpec
from svfseg.svf import svf_layers

SECTION = "## Loading an SVF checkpoint (eval.py start-up)"


def _module(method: str) -> FewShotSegModule:
    spec = RunSpec(
        FoldSpec("pascal", 0),
        method={"name": method, "reduce_dim": 256},
        backbone={"name": "resnet50", "pretrained": None},
        finetune={"name": "svf"},
    )
    return FewShotSegModule(run=spec.to_dict(), load_pretrained=False)


def save_checkpoint(path: Path, method: str) -> dict[str, Any]:
    """A trained-looking SVF checkpoint: the strategy applied, s moved off s0, written as Lightning does."""
    torch.manual_seed(0)
    module = _module(method)
    module.apply_finetune()
    with torch.no_grad():
        for _, layer in svf_layers(module.model.backbone):
            layer.s.mul_(1.01)
    checkpoint: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return checkpoint["state_dict"]


def load_from_shapes(path: Path) -> FewShotSegModule:
    return FewShotSegModule.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    )


def load_with_svd(path: Path, method: str) -> FewShotSegModule:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module = _module(method)
    module.apply_finetune()  # the checkpoint's strategy (svf): one SVD per converted layer
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    return module


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing eval.py's task module (what every eval.py run pays)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import svfseg.tasks.evaluate"], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="baseline", choices=("baseline", "pfenet", "bam"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None, help="markdown file to update (its section)")
    args = parser.parse_args(argv)
    if args.method == "bam":
        parser.error("BAM loads its base learner from a stage-1 file; time baseline or pfenet here")
    logging.getLogger("svfseg").setLevel(logging.ERROR)

    times: dict[str, list[float]] = {"from shapes": [], "with SVD": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "svf.ckpt"
        saved = save_checkpoint(path, args.method)
        size_mb = path.stat().st_size / 2**20
        for round_ in range(args.repeats):
            order = ["from shapes", "with SVD"] if round_ % 2 == 0 else ["with SVD", "from shapes"]
            for name in order:
                start = time.perf_counter()
                module = load_from_shapes(path) if name == "from shapes" else load_with_svd(path, args.method)
                times[name].append(time.perf_counter() - start)
                state = module.state_dict()
                bad = [k for k, v in saved.items() if torch.is_tensor(v) and not torch.equal(v, state[k])]
                if bad:
                    raise AssertionError(f"{name}: tensors differ from the checkpoint, e.g. {bad[0]}")
                del module, state

    imports = statistics.median(import_seconds() for _ in range(args.repeats))
    med = {k: statistics.median(v) for k, v in times.items()}
    cmd = " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"Command: `.venv/bin/python benchmarks/bench_load.py {cmd}`  ",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; date {dt.date.today()}.",
        "",
        f"`FewShotSegModule.load_from_checkpoint` of a full-width ResNet-50 {args.method} checkpoint with "
        f"`finetune=svf` (layer2-4: 42 SVF layers; file {size_mb:.0f} MiB). Median (min) of "
        f"{args.repeats} interleaved rounds; both ways end with tensors equal to the file's.",
        "",
        "| load | seconds |",
        "|---|---|",
        *(f"| {k} | {med[k]:.2f} ({min(times[k]):.2f}) |" for k in times),
        "",
        f"Loading from shapes is {med['with SVD'] / med['from shapes']:.0f}x faster: the SVDs the old path "
        "ran were overwritten by the state dict anyway. For scale, a fresh process importing eval.py's "
        f"modules takes {imports:.2f} s (median of {args.repeats}), unchanged; so eval.py's start-up before "
        f"data loading went from about {imports + med['with SVD']:.1f} s to {imports + med['from shapes']:.1f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
