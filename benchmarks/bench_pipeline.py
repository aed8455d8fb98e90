"""Whole-pipeline throughput on CPU: training steps, evaluation episodes, the data loader, the class index.

    python benchmarks/bench_pipeline.py [--size 473] [--repeats 3] [--write docs/benchmarks.md]
    python benchmarks/bench_pipeline.py --only index --index-labels 80000

Parts (``--only`` picks some; all by default). Each writes its own section of ``--write``, so a part
re-run alone replaces only its figures:

* ``step``: one training step of the full-width baseline (PFENet with ASPP, ResNet-50 deep stem, random
  init) on one episode (1 query + k supports) at ``--size`` px, for ``finetune=freeze``, ``full``,
  ``svf`` and ``svf`` with ``checkpointing=true``, 1- and 5-shot: forward, loss, backward and the SGD
  step of the strategy's param groups. All variants live in one process and run interleaved in a fresh
  seeded order each round, so machine noise hits them alike; medians are reported.
* ``step`` also measures the peak memory of one such step (5-shot; 1-shot too with ``--memory-shots 1 5``), each
  variant in a process of its own, forked from one memory server (``benchlib.measure_in_forks``: VmHWM
  above the resident model, glibc mmap threshold at 64 KiB so RSS tracks live tensors).
* ``eval``: evaluation episodes per second of the SVF model (merged cached weights, batch 1, no_grad).
* ``loader``: training episodes per second out of the real ``FewShotDataModule`` loader (JPEG/PNG
  decoding, the reference augmentation, crop to ``--size``) with 0, 1 and 2 workers, 1- and 5-shot, on a
  synthetic Pascal-layout dataset of 500 px images made in a temporary folder.
* ``index``: the time to build the COCO-20i training list (class index over every label, >= 2048-pixel
  rule, leakage filter) for ``--index-labels`` synthetic COCO-layout labels at ``--index-label-size``
  px, with 2 worker processes: first run (reads every label) and second run (cached).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from benchlib import (
    SERVER_FLAG,
    interleaved_times,
    measure_in_forks,
    measure_peak,
    retain_freed_memory,
    serve_forked,
    write_section,
)
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy
from svfseg.lightning.optim import OptimConfig, build_optimizer
from svfseg.methods.registry import build_model

STEP_VARIANTS: dict[str, dict[str, Any]] = {
    "freeze": {"name": "freeze"},
    "full": {"name": "full"},
    "svf": {"name": "svf"},
    "svf_ckpt": {"name": "svf", "checkpointing": True},
}
LABELS = {
    "freeze": "freeze",
    "full": "full fine-tune",
    "svf": "SVF",
    "svf_ckpt": "SVF + activation checkpointing",
}
PARTS = ("step", "eval", "loader", "index")  # "step" also measures the peak memory


# ------------------------------------------------------------------------------------------ models
def build_variant(variant: str, shot: int, base: nn.Module | None = None) -> tuple[nn.Module, Any]:
    """The baseline with the variant's strategy applied, and its SGD optimizer."""
    spec = dict(STEP_VARIANTS[variant])
    logging.getLogger("svfseg.backbones.factory").setLevel(logging.ERROR)
    if base is None:
        torch.manual_seed(0)
        base = build_model("baseline", build_backbone("resnet50", pretrained=None), shot=shot)
    model = copy.deepcopy(base)
    groups = build_strategy(spec.pop("name"), **spec).apply(model)
    model.train()
    return model, build_optimizer(groups, OptimConfig())


def episode(shot: int, size: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, size, size, generator=g)
    s = torch.randn(1, shot, 3, size, size, generator=g)
    sm = (torch.rand(1, shot, size, size, generator=g) > 0.6).long()
    qm = (torch.rand(1, size, size, generator=g) > 0.6).long()
    return q, s, sm, qm


def train_step(model: nn.Module, optimizer: Any, batch: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(*batch).loss.backward()
        optimizer.step()

    return step


# ------------------------------------------------------------------------------------------ parts
def time_steps(size: int, shots: tuple[int, ...], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Median-ready step times per ``<variant>@<shot>``, interleaved rounds in one process."""
    retain_freed_memory()
    units: dict[str, Callable[[], None]] = {}
    for shot in shots:
        torch.manual_seed(0)
        base = build_model("baseline", build_backbone("resnet50", pretrained=None), shot=shot)
        batch = episode(shot, size)
        for v in STEP_VARIANTS:
            model, opt = build_variant(v, shot, base)
            units[f"{v}@{shot}"] = train_step(model, opt, batch)
    return interleaved_times(units, repeats, warmup, digits=1)


def memory_worker(request: str, size: int) -> dict[str, float]:
    """In a process of its own: peak memory (MiB) of one training step of ``VARIANT@SHOT`` above the resident
    model."""
    variant, shot = request.split("@")
    model, opt = build_variant(variant, int(shot))
    step = train_step(model, opt, episode(int(shot), size))
    step()  # warm-up: optimizer state (momentum buffers), lazy allocations
    peaks = [measure_peak(step, lambda: None) for _ in range(2)]
    return {"peak_mib": max(peaks)}


def measure_memory(size: int, shots: tuple[int, ...]) -> dict[str, float]:
    requests = [f"{v}@{shot}" for shot in shots for v in STEP_VARIANTS]
    results = measure_in_forks(Path(__file__), requests, ["--size", str(size)])
    out = {request: result["peak_mib"] for request, result in results.items()}
    for request, peak in out.items():
        print(f"  memory {request}: {peak:.0f} MiB", flush=True)
    return out


def eval_rate(size: int, shots: tuple[int, ...], n: int) -> dict[int, float]:
    """Episodes per second of the SVF-converted baseline in eval mode (merged cached weights)."""
    rates = {}
    for shot in shots:
        model, _ = build_variant("svf", shot)
        model.eval()
        batch = episode(shot, size)[:3]
        with torch.no_grad():
            model(*batch)  # builds the merged-weight caches
            t0 = time.perf_counter()
            for _ in range(n):
                model(*batch)
            rates[shot] = n / (time.perf_counter() - t0)
        print(f"  eval {shot}-shot: {rates[shot]:.2f} episodes/s", flush=True)
    return rates


def eval_e2e_rate(size: int, shots: tuple[int, ...], n: int, tmp: Path) -> dict[int, float]:
    """Episodes per second of ``trainer.test`` on fixed synthetic episodes: loading (2 workers), the SVF
    model (merged weights) and the metric at original label resolution, as ``eval.py`` runs it."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic
    from svfseg.tasks.builders import build_datamodule, build_module
    from svfseg.tasks.resolve import TrainRun

    image_size = 500
    root = make_synthetic("pascal", tmp / "pascal", n_train=240, n_val=160, size=image_size)
    rates = {}
    for shot in shots:
        GlobalHydra.instance().clear()
        conf = Path(__file__).resolve().parents[1] / "conf"
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
                    "dataset=synthetic",
                    f"dataset.root={root}",
                    f"dataset.min_pixels={coverage_min_pixels(image_size)}",
                    f"dataset.eval_size={size}",
                    f"dataset.train_size={size}",
                    f"dataset.n_episodes={n}",
                    "dataset.eval_batch_size=1",
                    "dataset.num_workers=2",
                    f"shot={shot}",
                    "finetune=svf",
                    "backbone.pretrained=null",
                    f"paths.output_dir={tmp / 'run'}",
                ],
            )
        run = TrainRun.from_config(cfg)
        module = build_module(run)
        module.apply_finetune()
        dm = build_datamodule(run)
        dm.setup("test")
        trainer = pl.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer.test(module, dataloaders=dm.eval_dataloader(), verbose=False)
        rates[shot] = n / (time.perf_counter() - t0)
        print(f"  eval end to end {shot}-shot: {rates[shot]:.2f} episodes/s", flush=True)
    return rates


def loader_rate(size: int, shots: tuple[int, ...], workers: tuple[int, ...], n: int, tmp: Path) -> dict:
    from svfseg.data.datamodule import FewShotDataModule
    from svfseg.data.fold import FoldSpec
    from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic

    image_size = 500
    root = make_synthetic("pascal", tmp / "pascal", n_train=240, n_val=160, size=image_size)
    rates: dict[str, float] = {}
    for shot in shots:
        for w in workers:
            dm = FewShotDataModule(
                split=FoldSpec("synthetic", 0, shot=shot),
                root=root,
                train_size=size,
                eval_size=size,
                batch_size=1,
                num_workers=w,
                min_pixels=coverage_min_pixels(image_size),
                n_episodes=20,
                train_episodes_for_curve=0,
            )
            dm.setup("fit")
            it = iter(dm.train_dataloader())
            for _ in range(3):  # worker start-up and first batches out of the timing
                next(it)
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            rates[f"{shot}@{w}"] = n / (time.perf_counter() - t0)
            del it
            print(f"  loader {shot}-shot, {w} workers: {rates[f'{shot}@{w}']:.1f} episodes/s", flush=True)
    return rates


def make_coco_labels(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` COCO-layout train labels (1-3 rectangles of classes 1..80) and one shared tiny JPEG per image.

    Labels are distinct PNGs; images are hard links to a few valid JPEGs (the class index reads labels only,
    and checks that each image exists).
    """
    rng = np.random.default_rng(seed)
    labels, images = root / "annotations" / "train2014", root / "train2014"
    labels.mkdir(parents=True)
    images.mkdir(parents=True)
    grey = np.full((size, size, 3), 127, np.uint8)
    for i in range(n):
        jpeg = root / f"shared{i // 50_000}.jpg"  # ext4 allows 65,000 links per file
        if i % 50_000 == 0:
            cv2.imwrite(str(jpeg), grey)
        lab = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(1, 81))
            y, x = rng.integers(0, size // 2, 2)
            h, w = rng.integers(size // 8, size // 2, 2)
            lab[y : y + h, x : x + w] = c
        stem = f"COCO_train2014_{i:012d}"
        cv2.imwrite(str(labels / f"{stem}.png"), lab)
        os.link(jpeg, images / f"{stem}.jpg")


def index_time(n: int, size: int, tmp: Path) -> dict[str, float]:
    from svfseg.data.fold import FoldSpec
    from svfseg.data.lists.selection import build_list

    root = tmp / "coco"
    t0 = time.perf_counter()
    make_coco_labels(root, n, size)
    made = time.perf_counter() - t0
    print(f"  wrote {n} labels of {size}px in {made:.0f}s", flush=True)
    min_pixels = max(1, 2048 * size * size // (480 * 640))  # the 2048-of-480x640 rule, scaled
    out = {"labels": float(n), "size": float(size), "min_pixels": float(min_pixels)}
    for run in ("first", "cached"):
        t0 = time.perf_counter()
        lst = build_list(FoldSpec("coco", 0), root, "train", min_pixels=min_pixels, workers=2, progress=False)
        out[run] = time.perf_counter() - t0
        print(f"  class index ({run}): {out[run]:.1f}s, {len(lst.pairs)} training pairs", flush=True)
    out["pairs"] = float(len(lst.pairs))
    return out


# ------------------------------------------------------------------------------------------ report
SECTIONS = {
    "step": "## Pipeline (CPU): training step time and memory",
    "eval": "## Pipeline (CPU): evaluation episodes per second",
    "loader": "## Pipeline (CPU): data loader episodes per second",
    "index": "## Pipeline (CPU): class index build time",
}


def header(part: str, args: argparse.Namespace) -> list[str]:
    """Heading, the command that reproduces this part alone, the machine."""
    others = [a for a in sys.argv[1:] if a not in PARTS and a not in ("--only", "--write", str(args.write))]
    cmd = " ".join(["--only", part, *others, *(["--write", str(args.write)] if args.write else [])])
    return [
        SECTIONS[part],
        "",
        f"Command: `.venv/bin/python benchmarks/bench_pipeline.py {cmd}`  ",
        f"Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; date {dt.date.today()}.",
        "",
    ]


def render_step(args: argparse.Namespace, times: dict[str, list[float]], mem: dict[str, float]) -> list[str]:
    lines = [
        "Full-width baseline (PFENet + ASPP head, ResNet-50 deep stem, dilated, random init), one episode "
        f"(1 query + k supports) per step at {args.size} px: forward, loss, backward, SGD step over the "
        f"strategy's param groups (lr 0.015, momentum 0.9, wd 1e-4). Median (min) of {args.repeats} "
        f"interleaved rounds after {args.warmup} warm-up; peak memory at "
        f"{', '.join(map(str, args.memory_shots))}-shot.",
        "",
        "| variant | shot | step time, median (min) s | x full FT | peak step memory (MiB) | x full FT |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for shot in args.shots:
        for v in STEP_VARIANTS:
            k, f = f"{v}@{shot}", f"full@{shot}"
            t = times.get(k)
            tcell = f"{statistics.median(t):.1f} ({min(t):.1f})" if t else "-"
            tx = f"{statistics.median(t) / statistics.median(times[f]):.2f}" if t and f in times else "-"
            m = mem.get(k)
            mcell, mx = (f"{m:.0f}", f"{m / mem[f]:.2f}") if m is not None and f in mem else ("-", "-")
            lines.append(f"| {LABELS[v]} | {shot} | {tcell} | {tx} | {mcell} | {mx} |")
    for shot in args.memory_shots:
        a, b = mem.get(f"svf_ckpt@{shot}"), mem.get(f"svf@{shot}")
        if a is not None and b:
            lines += ["", f"Activation checkpointing under SVF, {shot}-shot at {args.size} px: peak step "
                      f"memory {a:.0f} MiB vs {b:.0f} MiB without, **{a / b:.2f}x**."]  # fmt: skip
    return [*lines, "", *STEP_NOTES]


def render_eval(args: argparse.Namespace, rates: dict[int, float], e2e: dict[int, float]) -> list[str]:
    cells = ", ".join(f"{shot}-shot **{r:.2f}** episodes/s" for shot, r in rates.items())
    e2e_cells = ", ".join(f"{shot}-shot **{r:.2f}** episodes/s" for shot, r in e2e.items())
    return [
        f"* Model only: the SVF-converted baseline (as in the step section) in eval mode, merged cached "
        f"weights, batch 1, no_grad, {args.size} px, {args.eval_episodes} episodes: {cells}.",
        f"* End to end, as `eval.py` runs it: `trainer.test` over {args.eval_episodes} fixed episodes of a "
        f"synthetic Pascal-layout dataset (500 px JPEGs resized to {args.size}), 2 loader workers, batch "
        f"1, the SVF model, the metric at original label resolution: {e2e_cells}.",
    ]


def render_loader(args: argparse.Namespace, rates: dict[str, float]) -> list[str]:
    lines = [
        f"`FewShotDataModule` training loader (JPEG/PNG decoding, the reference augmentation, crop "
        f"{args.size}, batch 1) on a synthetic Pascal-layout dataset of 500 px images, "
        f"{args.loader_episodes} episodes after 3 warm-up ones, episodes/s:",
        "",
        "| shot | " + " | ".join(f"{w} workers" for w in args.workers) + " |",
        "| ---: | " + " | ".join("---:" for _ in args.workers) + " |",
    ]
    for shot in args.shots:
        lines.append(f"| {shot} | " + " | ".join(f"{rates[f'{shot}@{w}']:.1f}" for w in args.workers) + " |")
    return [
        *lines,
        "",
        "* A loader with 1 worker moves decoding off the main process but adds inter-process transfer; "
        "with 2 CPU cores, 2 workers is the most this machine can use.",
    ]


def render_index(ix: dict[str, float]) -> list[str]:
    return [
        f"COCO-20i fold 0 training list (class index over every label, >= threshold rule, leakage filter) "
        f"for {int(ix['labels']):,} synthetic COCO-layout labels of {int(ix['size'])} px (threshold scaled "
        f"to {int(ix['min_pixels'])} px), 2 worker processes: first build **{ix['first']:.1f} s**, cached "
        f"**{ix['cached']:.2f} s** ({int(ix['pairs']):,} training pairs after the leakage filter).",
        "",
        "* The cached build still stats every label (its (mtime, size) keys the cache, so an edited label "
        "is re-read) and parses the cached counts; the first build reads and counts every PNG.",
    ]


def render(part: str, args: argparse.Namespace, res: dict[str, Any]) -> str:
    if part == "step":
        body = render_step(args, res["step"], res["memory"])
    elif part == "eval":
        body = render_eval(args, res["eval"], res["eval_e2e"])
    elif part == "loader":
        body = render_loader(args, res["loader"])
    else:
        body = render_index(res["index"])
    return "\n".join([*header(part, args), *body]).rstrip() + "\n"


STEP_NOTES = [
    "* Step times include the head (ASPP, prior, classifier), the loss and the SGD step, which cost the "
    "same in every variant, so the SVF/full ratio is closer to 1 than the backbone-only ratio of the SVF "
    "layer section. Under SVF nothing in layer0-1 needs a gradient (no graph is recorded there) and "
    "layer2-4 run factorised; full fine-tuning also back-propagates through layer0-1 and computes every "
    "weight gradient.",
    "* Activation checkpointing recomputes layer2-4 in backward (about one more forward of those stages) "
    "instead of keeping their activations: the memory ratio is the number to read, the time ratio its "
    "price.",
    "* Peak step memory is measured in a process of its own per variant, forked from one memory server "
    "(`benchmarks/benchlib.py`); the freeze row keeps no activations for backward.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--memory-shots", type=int, nargs="+", default=[5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loader-episodes", type=int, default=60)
    parser.add_argument("--index-labels", type=int, default=80_000)
    parser.add_argument("--index-label-size", type=int, default=64)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file's section")
    parser.add_argument(SERVER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_server:
        serve_forked(lambda request: memory_worker(request, args.size))
        return
    res: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="svfseg-bench-"))
    try:
        if "index" in args.only:
            print("class index ...", flush=True)
            res["index"] = index_time(args.index_labels, args.index_label_size, tmp)
        if "loader" in args.only:
            print("data loader ...", flush=True)
            res["loader"] = loader_rate(args.size, tuple(args.shots), tuple(args.workers),
                                        args.loader_episodes, tmp)  # fmt: skip
        if "step" in args.only:
            print("peak memory (one forked process per variant) ...", flush=True)
            res["memory"] = measure_memory(args.size, tuple(args.memory_shots))
        if "eval" in args.only:
            print("evaluation ...", flush=True)
            res["eval"] = eval_rate(args.size, tuple(args.shots), args.eval_episodes)
            res["eval_e2e"] = eval_e2e_rate(args.size, tuple(args.shots), args.eval_episodes, tmp)
        if "step" in args.only:
            print(f"training steps, {args.repeats} interleaved rounds ...", flush=True)
            res["step"] = time_steps(args.size, tuple(args.shots), args.repeats, args.warmup)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for part in (p for p in PARTS if p in args.only):
        text = render(part, args, res)
        print()
        print(text)
        if args.write is not None:
            write_section(args.write, SECTIONS[part], text)
    if args.write is not None:
        print(f"updated {args.write}")


if __name__ == "__main__":
    main()
