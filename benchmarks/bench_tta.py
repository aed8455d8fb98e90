"""Cost per episode of test-time adaptation on the support (docs/tta.md), on a small synthetic eval.

Builds the synthetic Pascal-layout data and a tiny SVF checkpoint (``debug=tiny``: width 0.125, 65 px
crops, one short epoch) once under ``--work``, then times ``evaluate`` (eval.py's logic, in process) on
the same fixed episodes for ``tta.steps`` in ``--steps`` and ``tta.params`` in ``--params``. Reports the
whole ``evaluate`` call per episode (loading, data, working copies, test loop; best of ``--repeats``) and
what adaptation adds per episode over ``steps=0``, which is what it costs on a long evaluation.

    python benchmarks/bench_tta.py --episodes 48 --steps 0 5 10 --params s lora
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic  # noqa: E402
from svfseg.tasks.evaluate import evaluate  # noqa: E402
from svfseg.tasks.train import train  # noqa: E402
from tests.helpers.hydra import compose_config, tiny_train_config  # noqa: E402

SIZE = 96


def checkpoint(work: Path) -> Path:
    """The tiny SVF checkpoint under ``work`` (made once)."""
    root = work / "pascal"
    if not (root / "done").exists():
        make_synthetic("pascal", root, n_train=120, n_val=60, size=SIZE)
        (root / "done").write_text("")
    ckpt = work / "svf" / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        cfg = tiny_train_config(
            root,
            work / "svf",
            min_pixels=coverage_min_pixels(SIZE),
            extra=["finetune=svf", "test_after_fit=false"],
        )
        train(cfg)
    return ckpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_tta")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 5, 10])
    parser.add_argument("--params", nargs="+", default=["s", "lora"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ckpt = checkpoint(args.work)
    rows: list[dict] = []
    base: float | None = None  # steps=0 (plain evaluation), when measured
    for params in args.params:
        for steps in args.steps:
            if steps == 0 and params != args.params[0]:
                continue  # steps=0 is plain evaluation whatever params says
            total = []
            for repeat in range(args.repeats):
                cfg = compose_config(
                    "eval",
                    [
                        f"ckpt_path={ckpt}",
                        f"paths.output_dir={args.work / 'eval' / f'{params}-{steps}-{repeat}'}",
                        "trainer.accelerator=cpu",
                        "num_workers=0",
                        f"n_episodes={args.episodes}",
                        "seeds=321",
                        "+trainer.enable_progress_bar=false",
                        f"tta.steps={steps}",
                        f"tta.params={params}",
                    ],
                )
                start = time.perf_counter()
                evaluate(cfg)
                total.append(time.perf_counter() - start)
            per_episode = min(total) / args.episodes
            if steps == 0:
                base = per_episode
            rows.append(
                {
                    "params": params if steps else "-",
                    "steps": steps,
                    "evaluate_s_per_episode": round(per_episode, 4),
                    "added_s_per_episode": None if base is None else round(per_episode - base, 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(),
                "episodes": args.episodes,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
