"""The spread behind tests/tasks/test_learning.py's margins: its runs over seeds and thread counts.

    python benchmarks/learning_spread.py --seeds 0 1 2 3 4 --threads 1 2 [--out DIR]

For each thread count it builds the learning tests' proxy weights (the float path, and so the weights,
may differ with the thread count and the CPU's kernels), then trains every seed with SVF, with a frozen
backbone and with SVF from a random backbone, and prints each quantity a test asserts with its mean, range
and largest deviation from the mean. Set ``ATEN_CPU_CAPABILITY=avx2`` to also cover an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic
from svfseg.pretrain import build_proxy_weights
from tests.helpers.learning import LEARNING_PROXY, run_learning

VARIANTS = {"svf": ("svf", True), "freeze": ("freeze", True), "svf_random_init": ("svf", False)}


def quantities(name: str, r: dict) -> dict[str, float]:
    q = {
        f"{name}.miou": r["miou"],
        f"{name}.miou_minus_all_fg": r["miou"] - r["all_fg_miou"],
        f"{name}.fbiou_minus_all_bg": r["fbiou"] - r["all_bg_fbiou"],
        f"{name}.min_class_iou": min(r["class_iou"]),
        f"{name}.loss_drop": r["epoch_loss"][0] - r["epoch_loss"][-1],
    }
    if "max_s_change" in r:
        q[f"{name}.max_s_change"] = r["max_s_change"]
    return q


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=None, help="keep runs and write spread.json here")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="learning-spread-"))
    data = make_synthetic("pascal", out / "data", n_train=120, n_val=60, size=96), coverage_min_pixels(96)
    rows: list[dict] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        weights = build_proxy_weights(LEARNING_PROXY, out / f"proxy-t{threads}").path
        print(f"threads={threads}: proxy built in {time.perf_counter() - t0:.0f} s", flush=True)
        for seed in args.seeds:
            row = {"threads": threads, "seed": seed, "cpu": torch.backends.cpu.get_cpu_capability()}
            for name in args.variants:
                finetune, pretrained = VARIANTS[name]
                t0 = time.perf_counter()
                run_dir = out / f"t{threads}-s{seed}-{name}"
                r = run_learning(data, run_dir, weights if pretrained else None, finetune=finetune, seed=seed)
                row.update(quantities(name, r))
                row[f"{name}.seconds"] = round(time.perf_counter() - t0, 1)
            if {"svf", "svf_random_init"} <= set(args.variants):
                row["svf_minus_random_init.miou"] = row["svf.miou"] - row["svf_random_init.miou"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("threads", "seed", "cpu")]
    print(f"\n{'quantity':38s} {'mean':>8s} {'min':>8s} {'max':>8s} {'max dev':>8s}")
    summary = {}
    for k in keys:
        vals = [r[k] for r in rows]
        mean = statistics.fmean(vals)
        dev = max(abs(v - mean) for v in vals)
        summary[k] = {"mean": mean, "min": min(vals), "max": max(vals), "max_dev": dev}
        print(f"{k:38s} {mean:8.4f} {min(vals):8.4f} {max(vals):8.4f} {dev:8.4f}")
    (out / "spread.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    print(f"\nruns and spread.json in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
