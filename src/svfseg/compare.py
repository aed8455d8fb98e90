"""``svfseg-compare A B``: is checkpoint A better than B on the same episodes, beyond the episode draw?

Reads the ``episodes.json`` that train.py and eval.py write beside ``metrics.json``, checks that both
runs were tested on the same episode tables (per seed, by digest), and prints A - B in mIoU points with
a paired bootstrap interval over the query images (:mod:`svfseg.metrics.bootstrap`). This is the
uncertainty from the sample of tested images only: the spread over training seeds is another one
(``python -m svfseg.tables DIR --paired ROW``).
"""

from __future__ import annotations

import argparse
import sys

from svfseg.metrics.bootstrap import DEFAULT_RESAMPLES, PairedDifference, paired_difference
from svfseg.metrics.episode_file import EpisodeFile, read_episodes


def compare_runs(
    a: EpisodeFile, b: EpisodeFile, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[PairedDifference, list[int]]:
    """A - B over the seeds both were tested on; refused when their episodes are not the same."""
    if a.classes != b.classes:
        raise ValueError(
            f"{a.path} and {b.path} were tested on different classes ({list(a.classes)} vs {list(b.classes)}): "
            "compare runs of one dataset, fold and class split"
        )
    seeds = sorted(set(a.seeds) & set(b.seeds))
    if not seeds:
        raise ValueError(
            f"{a.path} (seeds {sorted(a.seeds)}) and {b.path} (seeds {sorted(b.seeds)}) share no evaluation "
            "seed: evaluate both with eval.py on the same seeds= list"
        )
    differ = [s for s in seeds if a.tables[s] != b.tables[s]]
    if differ:
        raise ValueError(
            f"seed {differ[0]}: {a.path} and {b.path} were tested on different episodes (another shot, "
            "n_episodes, dataset.selection or data): evaluate both with eval.py on the same settings"
        )
    result = paired_difference(
        [a.seeds[s] for s in seeds],
        [b.seeds[s] for s in seeds],
        len(a.classes),
        resamples=resamples,
        seed=seed,
        level=level,
    )
    return result, seeds


def report(a: EpisodeFile, b: EpisodeFile, result: PairedDifference, seeds: list[int], level: float) -> str:
    lo, hi = (100 * v for v in result.interval)
    return "\n".join(
        [
            f"A: {a.path.parent}  mIoU {100 * result.miou_a:.2f}",
            f"B: {b.path.parent}  mIoU {100 * result.miou_b:.2f}",
            f"A - B: {100 * result.difference:+.2f} mIoU points; {100 * level:g} % paired bootstrap interval "
            f"[{lo:+.2f}, {hi:+.2f}] ({result.resamples} resamples of the same {result.n_images} query images; "
            f"{result.n_episodes} episodes, seeds {seeds}); A <= B in {100 * result.share_not_above:.1f} % of them",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="svfseg-compare",
        description="Paired bootstrap of the mIoU difference of two runs tested on the same episodes.",
    )
    parser.add_argument("a", help="run folder (or its episodes.json) of train.py or eval.py")
    parser.add_argument("b", help="the run to compare with, tested on the same episodes")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--level", type=float, default=0.95, help="interval level, in (0, 1)")
    args = parser.parse_args(argv)
    if args.resamples < 100 or not 0 < args.level < 1:
        parser.error("--resamples must be >= 100 and --level in (0, 1)")
    try:
        a, b = read_episodes(args.a), read_episodes(args.b)
        result, seeds = compare_runs(a, b, resamples=args.resamples, seed=args.seed, level=args.level)
    except (OSError, ValueError) as err:
        print(f"svfseg-compare: {err}", file=sys.stderr)
        return 2
    print(report(a, b, result, seeds, args.level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
