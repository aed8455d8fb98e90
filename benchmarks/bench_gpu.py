"""GPU check in one run: step time and peak memory of freeze / full / SVF / SVF + checkpointing, and eval speed.

    bash benchmarks/gpu_check.sh OUT_DIR            # on a CUDA machine; about 3-6 minutes on one GPU
    python benchmarks/bench_gpu.py --out OUT_DIR [--device cuda] [--settings 473:1,473:5,641:5]

The full-width baseline (PFENet with ASPP, dilated deep-stem ResNet-50, random init) trains on one episode
(1 query + k supports) per step, fp32 and bf16 autocast, for each (size, shot) setting; all variants of a
setting run interleaved in a seeded random order each round, so clock and thermal drift hit them alike, and
ratios to full fine-tuning are taken from the medians of the same run. Peak memory is
``torch.cuda.max_memory_allocated`` of one step above the resident model and optimizer state. Eval:
episodes per second of the SVF model (merged cached weights, no_grad, batch 1) at 473 px, 1- and 5-shot.
Writes ``OUT_DIR/gpu_check.md`` and ``OUT_DIR/gpu_check.json`` and prints the table. ``--device cpu`` with
small ``--settings`` and ``--width`` is the smoke mode the test suite runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from bench_pipeline import LABELS, STEP_VARIANTS, episode
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy
from svfseg.lightning.optim import OptimConfig, build_optimizer
from svfseg.methods.registry import build_model

PRECISIONS = ("fp32", "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _autocast(precision: str, device: torch.device) -> Iterator[None]:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def _base(shot: int, width: float, reduce_dim: int) -> nn.Module:
    torch.manual_seed(0)
    backbone = build_backbone("resnet50", pretrained=None, width_mult=width, warn_if_random=False)
    return build_model("baseline", backbone, shot=shot, reduce_dim=reduce_dim)


def _variant(base: nn.Module, variant: str, device: torch.device) -> tuple[nn.Module, Any]:
    model = copy.deepcopy(base)
    spec = dict(STEP_VARIANTS[variant])
    groups = build_strategy(spec.pop("name"), **spec).apply(model)
    model.to(device).train()
    return model, build_optimizer(groups, OptimConfig())


def _step(
    model: nn.Module, opt: Any, batch: tuple[torch.Tensor, ...], precision: str, device: torch.device
) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(precision, device):
            loss = model(*batch).loss
        loss.backward()
        opt.step()

    return step


def _peak_mib(step: Callable[[], None], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def time_setting(
    size: int, shot: int, args: argparse.Namespace, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Median/min step time and peak memory per ``<variant>/<precision>`` for one (size, shot)."""
    base = _base(shot, args.width, args.reduce_dim)
    batch = tuple(t.to(device) for t in episode(shot, size))
    units: dict[str, Callable[[], None]] = {}
    for variant in STEP_VARIANTS:
        model, opt = _variant(base, variant, device)
        for precision in args.precisions:
            units[f"{variant}/{precision}"] = _step(model, opt, batch, precision, device)
    peaks = {}
    for key, step in units.items():
        step()  # warm-up: optimizer state, cuDNN autotuning, lazy allocations
        peaks[key] = _peak_mib(step, device)
    times: dict[str, list[float]] = {k: [] for k in units}
    rng = random.Random(0)
    for r in range(args.warmup + args.repeats):
        order = list(units)
        rng.shuffle(order)
        for key in order:
            _sync(device)
            t0 = time.perf_counter()
            units[key]()
            _sync(device)
            if r >= args.warmup:
                times[key].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "peak_mib": peaks[k]} for k, v in times.items()
    }


def eval_rate(shot: int, size: int, args: argparse.Namespace, device: torch.device) -> float:
    """Episodes per second of the SVF model in eval (merged cached weights), batch 1, no_grad."""
    model, _ = _variant(_base(shot, args.width, args.reduce_dim), "svf", device)
    model.eval()
    q, s, sm, _ = (t.to(device) for t in episode(shot, size))
    with torch.no_grad():
        for _ in range(2):
            model(q, s, sm)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.eval_episodes):
            model(q, s, sm)
        _sync(device)
    return args.eval_episodes / (time.perf_counter() - t0)


def render(results: dict[str, Any], args: argparse.Namespace, device: torch.device, name: str) -> str:
    lines = [
        "## GPU check: training step and eval (ResNet-50 baseline)",
        "",
        f"Command: `bash benchmarks/gpu_check.sh OUT` (`python benchmarks/bench_gpu.py --repeats {args.repeats}`)  ",
        f"Device: {name}; torch {torch.__version__}; date {dt.date.today()}.",
        "",
        "Step = forward + loss + backward + SGD step, 1 query + k supports; median (min) of "
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up; x full = ratio to full fine-tuning of "
        "the same setting and precision; peak = max_memory_allocated of one step above the resident model.",
        "",
        "| setting | precision | variant | step s, median (min) | x full | peak MiB | x full |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for setting, rows in results["steps"].items():
        for precision in args.precisions:
            full = rows[f"full/{precision}"]
            for variant in STEP_VARIANTS:
                r = rows[f"{variant}/{precision}"]
                peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
                peak_x = "n/a" if r["peak_mib"] is None else f"{r['peak_mib'] / full['peak_mib']:.2f}"
                lines.append(
                    f"| {setting} | {precision} | {LABELS[variant]} | {r['median_s']:.3f} ({r['min_s']:.3f}) | "
                    f"{r['median_s'] / full['median_s']:.2f} | {peak} | {peak_x} |"
                )
    lines += ["", "| eval (SVF, merged) | episodes/s |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["eval"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md / gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--settings", default="473:1,473:5,641:5", help="size:shot pairs for the training steps"
    )
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--eval-settings", default="473:1,473:5")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument(
        "--width", type=float, default=1.0, help="backbone width (1.0 = ResNet-50; smoke tests)"
    )
    parser.add_argument("--reduce-dim", type=int, default=256)
    args = parser.parse_args(argv)
    args.precisions = tuple(p for p in args.precisions.split(",") if p)
    bad = [p for p in args.precisions if p not in PRECISIONS]
    if bad:
        parser.error(f"--precisions {bad}: choose from {PRECISIONS}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible; use --device cpu for the smoke mode")
    torch.set_float32_matmul_precision("highest")  # the paper's fp32; bf16 rows use autocast
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    pairs = [tuple(int(x) for x in p.split(":")) for p in args.settings.split(",") if p]
    start = time.perf_counter()
    results: dict[str, Any] = {"device": name, "steps": {}, "eval": {}}
    for size, shot in pairs:
        results["steps"][f"{size} px {shot}-shot"] = time_setting(size, shot, args, device)
        print(f"  {size} px {shot}-shot done ({time.perf_counter() - start:.0f} s)", flush=True)
    for size, shot in (tuple(int(x) for x in p.split(":")) for p in args.eval_settings.split(",") if p):
        results["eval"][f"{size} px {shot}-shot"] = eval_rate(shot, size, args, device)
    results["seconds"] = time.perf_counter() - start
    text = render(results, args, device, name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.md").write_text(text + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    print(f"\nwrote {args.out / 'gpu_check.md'} and gpu_check.json in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
