"""SVF on a Vision Transformer: training step and evaluation cost on CPU, as ratios side by side.

    python benchmarks/bench_vit.py [--size 518] [--repeats 3] [--write docs/benchmarks.md]

The baseline head on DINOv2 ViT-S/14 (timm, full size, random init), one 1-shot episode (1 query + 1
support) at ``--size`` px. Training step (forward, loss, backward, SGD step of the strategy's groups)
for ``freeze``, ``full`` and ``svf`` (singular values of layer2-4 = blocks 3-11), interleaved in one
process in a fresh order each round; evaluation forward (no_grad) of the SVF model with merged cached
weights and after ``merge_svf``, against the original plain model. Medians are reported, with ratios to full / to the original.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from bench_pipeline import episode, train_step
from benchlib import interleaved_times, write_section
from torch import nn

from svfseg.backbones import build_backbone
from svfseg.finetune import build_strategy
from svfseg.lightning.optim import OptimConfig, build_optimizer
from svfseg.methods.registry import build_model
from svfseg.svf import merge_svf

SECTION = "## SVF on a Vision Transformer (DINOv2 ViT-S/14, CPU)"
VARIANTS = ("freeze", "full", "svf")


def _base() -> nn.Module:
    logging.getLogger("svfseg.backbones.factory").setLevel(logging.ERROR)
    torch.manual_seed(0)
    return build_model("baseline", build_backbone("dinov2_vits14", pretrained=None), shot=1)


def measure(size: int, repeats: int) -> dict[str, list[float]]:
    base = _base()
    batch = episode(1, size)
    units: dict[str, Callable[[], None]] = {}
    models: dict[str, nn.Module] = {}
    for v in VARIANTS:
        model = copy.deepcopy(base)
        groups = build_strategy(v).apply(model)
        model.train()
        models[v] = model
        units[f"step/{v}"] = train_step(model, build_optimizer(groups, OptimConfig()), batch)
    # separate copies: the training units must keep training their own models
    svf_eval, plain_eval = copy.deepcopy(models["svf"]).eval(), copy.deepcopy(base).eval()
    merged_eval = copy.deepcopy(svf_eval)
    merge_svf(merged_eval)
    q, s, sm, _ = batch

    def forward(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(q, s, sm)

        return run

    units["eval/svf_cached"] = forward(svf_eval)
    units["eval/svf_merged"] = forward(merged_eval)
    units["eval/original"] = forward(plain_eval)
    return interleaved_times(units, repeats, warmup=1)


def render(args: argparse.Namespace, times: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_vit.py --size {args.size} --repeats {args.repeats}` on "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {dt.date.today().isoformat()}. The baseline on DINOv2 ViT-S/14 (full size, "
        f"random init), one 1-shot episode at {args.size} px ({args.size // 14 * 14} px after the resize "
        f"to a multiple of 14, {args.size // 14}x{args.size // 14} tokens); medians of {args.repeats} interleaved rounds.",
        "",
        "| | median s | ratio |",
        "|---|---|---|",
    ]
    for v in VARIANTS:
        lines.append(
            f"| training step, {v} | {med[f'step/{v}']:.2f} | {med[f'step/{v}'] / med['step/full']:.2f}x full |"
        )
    lines.append(f"| evaluation forward, original | {med['eval/original']:.2f} | 1.00x |")
    for key, label in (
        ("svf_cached", "SVF layers, cached merged weights"),
        ("svf_merged", "SVF merged to plain Linear (merge_svf)"),
    ):
        lines.append(
            f"| evaluation forward, {label} | {med[f'eval/{key}']:.2f} | "
            f"{med[f'eval/{key}'] / med['eval/original']:.2f}x original |"
        )
    lines += [
        "",
        "SVF's step still runs the backward through every block after the first trained one (the activations' "
        "gradients), so it saves the weight gradients and the optimizer update of the ~22M weights, not the "
        "backward itself; freezing skips the backbone backward. A merged model evaluates like the original "
        "(the ratio is noise between identical networks).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    text = render(args, measure(args.size, args.repeats))
    print(text)
    if args.write is not None:
        write_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
