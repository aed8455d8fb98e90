"""``make demo-synthetic``: the paper's freeze / full / SVF experiment at mini scale, on CPU, from nothing.

1. Build (or reuse) proxy-pretrained weights: a narrow deep-stem ResNet-50 pretrained on procedural
   categories that no few-shot class uses (``python -m svfseg.pretrain``).
2. Generate (or reuse) the synthetic dataset in the real Pascal layout.
3. Train the baseline on fold 0, 1-shot, with ``finetune=freeze``, ``full`` and ``svf``, each for several
   seeds, from the same proxy weights; test every run on the same fixed episodes.
4. Write ``comparison.json`` and draw Figure 2 (train vs val mIoU per epoch, one panel per strategy),
   Figure 4 (top-30 singular values before / after) and the SVF cue maps.

Whatever ordering appears is what was measured; it is printed with the spread over seeds. The setting
is far from the paper's (ImageNet, Pascal-5i, 200 epochs): see docs/mini-reproduction.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from svfseg.analysis import (
    image_from_dataset,
    load_run,
    plot_strategy_panels,
    select_convs,
)
from svfseg.analysis.png import save_png
from svfseg.data.io import read_label
from svfseg.dataprep.synthetic import LAYOUT_CLASSES, make_synthetic
from svfseg.demo.common import (
    check_run_configs,
    print_table,
    run_result,
    strategy_cells,
    summarise,
    svf_figures,
)
from svfseg.files import atomic_write_text
from svfseg.pretrain.proxy import ProxySpec, build_proxy_weights

SETTING = "baseline, 1-shot, fold 0, proxy-pretrained synthetic"
DISCLAIMER = (
    "Mini scale: a narrow ResNet-50 pretrained for a few minutes on procedural proxy categories, the synthetic "
    "Pascal-layout dataset and a few epochs on CPU. It shows how the three strategies behave in this setting, "
    "measured; it is not the paper's setting (ImageNet weights, Pascal-5i, 200 epochs) and does not reproduce "
    "its numbers."
)
STRATEGIES: tuple[str, ...] = ("freeze", "full", "svf")


@dataclass(frozen=True)
class DemoSettings:
    """One demo run; every strategy and seed uses all of it, so the comparison is like for like.

    ``backbone_lr_mult``: the paper trains the backbone at a tenth of the head's lr for ~100k steps; in a
    few hundred steps that moves the singular values by < 0.1%, so the demo trains every fine-tuned
    backbone (full and SVF alike) at the head's lr instead.
    """

    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 6
    lr: float = 0.01
    backbone_lr_mult: float = 1.0
    reduce_dim: int = 64
    train_size: int = 97
    eval_size: int = 97
    batch_size: int = 4
    n_episodes: int = 100
    train_episodes_for_curve: int = 60
    proxy: ProxySpec = field(default_factory=ProxySpec)

    def overrides(self, data_root: Path, weights: Path, out_dir: Path, finetune: str, seed: int) -> list[str]:
        """The Hydra overrides of one run (printed, so any run can be repeated with ``python train.py``)."""
        trained_backbone = (
            [] if finetune == "freeze" else [f"finetune.backbone_lr_mult={self.backbone_lr_mult}"]
        )
        return [
            "dataset=synthetic",
            "method=baseline",
            "backbone=resnet50",
            f"finetune={finetune}",
            "trainer=cpu",
            "logger=csv",
            f"seed={seed}",
            f"dataset.root={data_root}",
            f"dataset.epochs={self.epochs}",
            f"dataset.train_size={self.train_size}",
            f"dataset.eval_size={self.eval_size}",
            f"dataset.batch_size={self.batch_size}",
            f"dataset.n_episodes={self.n_episodes}",
            f"dataset.train_episodes_for_curve={self.train_episodes_for_curve}",
            f"backbone.pretrained={weights}",
            f"backbone.width_mult={self.proxy.width_mult:g}",
            f"method.reduce_dim={self.reduce_dim}",
            f"optim.lr={self.lr}",
            *trained_backbone,
            f"paths.output_dir={out_dir}",
            f"paths.log_dir={out_dir.parent}",
        ]


def run_demo(
    out: Path,
    data_root: Path,
    weights_dir: Path,
    settings: DemoSettings = DemoSettings(),
    *,
    synthetic: dict[str, Any] | None = None,
    extra_overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """The four demo steps; ``synthetic`` (make_synthetic options) and ``extra_overrides`` shrink it for tests."""
    console = Console()
    start = time.perf_counter()
    seed, weights = settings.seeds[0], weights_dir / "proxy.pth"  # composed only: no file is read
    check_run_configs(
        {
            f"--strategies {finetune}": [
                *settings.overrides(data_root, weights, out / finetune, finetune, seed),
                *extra_overrides,
            ]
            for finetune in settings.strategies
        }
    )
    console.print(f"[bold]1/4[/] proxy-pretrained backbone under {weights_dir}")
    proxy = build_proxy_weights(settings.proxy, weights_dir, log=console.print)
    held_out = proxy.record["held_out"]
    console.print(
        f"    {proxy.path} ({'built' if proxy.built else 'cached'}; held-out proxy foreground IoU "
        f"{held_out['foreground_iou']:.3f}, built in {proxy.record['seconds']:.0f} s)"
    )
    console.print(f"[bold]2/4[/] synthetic dataset at {data_root}")
    make_synthetic("pascal", data_root, progress=True, **(synthetic or {}))
    results: dict[str, Any] = {}
    for finetune in settings.strategies:
        per_seed: dict[int, dict[str, Any]] = {}
        for seed in settings.seeds:
            run_dir = out / finetune / f"seed{seed}"
            overrides = [
                *settings.overrides(data_root, proxy.path, run_dir, finetune, seed),
                *extra_overrides,
            ]
            per_seed[seed] = run_result(run_dir, overrides, console, "3/4")
        results[finetune] = summarise(per_seed)
    comparison = {
        "setting": SETTING,
        "ordering": sorted(results, key=lambda k: results[k]["miou_mean"], reverse=True),
        "demo": {**asdict(settings), "proxy": asdict(settings.proxy)},
        "proxy_weights": {"path": str(proxy.path), "sha256": proxy.record["sha256"], "held_out": held_out},
        **results,
    }
    print_comparison(comparison, console)
    console.print("[bold]4/4[/] plots")
    comparison["plots"] = write_plots(out, comparison, data_root)
    comparison["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(out / "comparison.json", json.dumps(comparison, indent=1, default=str) + "\n")
    console.print(f"[yellow]{DISCLAIMER}[/]")
    console.print(f"outputs in {out} ({comparison['seconds']:.0f} s)")
    return comparison


def comparison_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """The rows of the comparison table, best mIoU first."""
    rows = []
    for name in comparison["ordering"]:
        r = comparison[name]
        rows.append(
            [
                *strategy_cells(name, r),
                ",".join(map(str, r["seeds"])),
                f"{100 * r['train_miou_per_epoch'][-1]:.1f} / {100 * r['val_miou_per_epoch'][-1]:.1f}",
            ]
        )
    return rows


def print_comparison(comparison: dict[str, Any], console: Console) -> None:
    print_table(
        f"{SETTING}: the same fixed test episodes for every run",
        ("finetune", "mIoU % (mean ± std)", "FB-IoU % (mean)", "seeds", "last-epoch train / val mIoU %"),
        comparison_rows(comparison),
        console,
    )


def write_plots(out: Path, comparison: dict[str, Any], data_root: Path) -> dict[str, str]:
    """Figure 2 (all strategies), Figure 4 and the cue maps (first seed of the SVF run, if it ran)."""
    strategies = [s for s in comparison.get("demo", {}).get("strategies", STRATEGIES) if s in comparison]
    runs = {s: [out / s / f"seed{seed}" for seed in comparison[s]["seeds"]] for s in strategies}
    plots = {"figure2": out / "figure2_miou_curves.png"}
    fig = plot_strategy_panels(runs, title=f"Figure 2 at mini scale: {SETTING}")
    save_png(fig, plots["figure2"])
    if "svf" in comparison:
        seed = comparison["svf"]["seeds"][0]
        module, _ = load_run(Path(comparison["svf"]["per_seed"][str(seed)]["checkpoint"]))
        backbone = module.model.backbone
        layer = select_convs(backbone, "layer3", "3x3")[-1]
        first_val = (data_root / "lists" / "val.txt").read_text().split()
        image = image_from_dataset(data_root, first_val[0])
        label = read_label(data_root / first_val[1], LAYOUT_CLASSES["pascal"])
        plots |= svf_figures(
            out,
            backbone,
            layer,
            image,
            size=129,
            title="at mini scale",
            setting=SETTING,
            seed=seed,
            initial_label="initial (proxy-pretrained)",
            cues_name="cues_layer3_last_3x3.png",
            mask=label,
        )
    return {k: str(v) for k, v in plots.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svfseg.demo --synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/demo-synthetic"))
    parser.add_argument("--data", type=Path, default=Path("data/synthetic_pascal"))
    parser.add_argument("--weights", type=Path, default=Path("initmodel/proxy"), help="proxy weight cache")
    parser.add_argument("--epochs", type=int, default=DemoSettings.epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DemoSettings.seeds))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="finetune= choices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = DemoSettings(strategies=tuple(args.strategies), seeds=tuple(args.seeds), epochs=args.epochs)
    run_demo(args.out.resolve(), args.data.resolve(), args.weights.resolve(), settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
