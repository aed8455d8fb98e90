"""The spread behind tests/tasks/test_learning_real.py's margins: its run over seeds and 1 / 2 threads.

``python benchmarks/learning_spread_real.py --src CCP_RELEASE`` converts CCP once (to a temporary folder),
runs ``tests.helpers.real_learning.run_real_learning`` for every seed x thread count, each in a fresh
process (the thread count is fixed at start), and prints per quantity the mean, the lowest value and the
largest deviation from the mean, the numbers the test's margins come from (mean - 3 x deviation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_RUN = """
import json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.helpers.real_learning import run_real_learning
r = run_real_learning(Path({root!r}), Path({weights!r}), Path({out!r}), seed={seed})
print("RESULT " + json.dumps(r))
"""


def quantities(r: dict) -> dict[str, float]:
    return {"loss_drop": r["first_loss"] - r["last_loss"], "max_s_change": r["max_s_change"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--src", default=os.environ.get("SVFSEG_CCP_SRC"), help="the CCP release (default $SVFSEG_CCP_SRC)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    if not args.src:
        p.error("give --src or set SVFSEG_CCP_SRC to a clone of github.com/bearpaw/clothing-co-parsing")
    sys.path.insert(0, str(REPO))
    from svfseg.weights.fetch import fetch
    from svfseg.weights.sources import source
    from tests.helpers.real_learning import convert_subset

    with tempfile.TemporaryDirectory() as tmp:
        root = convert_subset(Path(args.src), Path(tmp) / "ccp")
        weights, _ = fetch(source("efficientnet_lite0"), Path(tmp) / "weights")
        results = []
        for threads in args.threads:
            for seed in args.seeds:
                out = Path(tmp) / f"run-s{seed}-t{threads}"
                code = ONE_RUN.format(
                    repo=str(REPO), root=str(root), weights=str(weights), out=str(out), seed=seed
                )
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                done = subprocess.run(
                    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
                )
                line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
                r = json.loads(line[len("RESULT ") :])
                results.append({"seed": seed, "threads": threads, **r})
                print(
                    json.dumps(
                        {
                            "seed": seed,
                            "threads": threads,
                            **quantities(r),
                            "train_episode_miou": r["train_episode_miou"],
                        }
                    ),
                    flush=True,
                )
    for key in ("loss_drop", "max_s_change"):
        values = [quantities(r)[key] for r in results]
        mean = statistics.fmean(values)
        print(
            f"{key}: mean {mean:.4f}, lowest {min(values):.4f}, max deviation {max(abs(v - mean) for v in values):.4f} ({len(values)} runs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
