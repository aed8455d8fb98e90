"""``python -m svfseg.demo``: the real-photo demo (CCP + ImageNet EfficientNet-Lite0); ``--synthetic`` runs
the synthetic one (no download); ``--study`` runs the folds x seeds x strategies study of docs/real-data.md."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from svfseg.dataprep.ccp import CCPError
from svfseg.demo import real, synthetic
from svfseg.demo.common import DemoInputError
from svfseg.demo.study import STUDY, run_study
from svfseg.weights.efficientnet_lite import LiteConversionError
from svfseg.weights.fetch import WeightsFetchError

# What a wrong option or a missing input raises before any training: one line, exit status 2.
INPUT_ERRORS = (DemoInputError, CCPError, LiteConversionError, WeightsFetchError, FileExistsError)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except INPUT_ERRORS as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2


def _main(args: list[str]) -> int:
    if "--synthetic" in args:
        args.remove("--synthetic")
        return synthetic.main(args)
    parser = argparse.ArgumentParser(prog="python -m svfseg.demo", description=real.__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="default outputs/demo (outputs/study with --study)"
    )
    parser.add_argument(
        "--data", type=Path, default=Path("data/ccp"), help="the CCP folder dataset (made once)"
    )
    parser.add_argument(
        "--src", default=None, help="CCP release to convert from (default $SVFSEG_CCP_SRC, else download)"
    )
    parser.add_argument(
        "--weights", type=Path, default=Path("initmodel"), help="where efficientnet_lite0.pth goes"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--strategies", nargs="+", default=None, help="finetune= choices")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="--study only (default 0 1 2 3)")
    parser.add_argument(
        "--fold", type=int, default=None, help="the demo's fold (default 1; fold 0 chose the settings)"
    )
    parser.add_argument(
        "--study", action="store_true", help="the study of docs/real-data.md instead of the demo"
    )
    parser.add_argument("--synthetic", action="store_true", help="the synthetic demo (make demo-synthetic)")
    ns = parser.parse_args(args)
    logging.basicConfig(level=logging.WARNING)
    if ns.study:
        settings = real.settings_with(STUDY.settings, seeds=ns.seeds, strategies=ns.strategies)
        out = (ns.out or Path("outputs/study")).resolve()
        run_study(
            out, ns.data.resolve(), ns.weights.resolve(), settings, folds=ns.folds or STUDY.folds, src=ns.src
        )
        return 0
    settings = real.settings_with(
        real.RealDemoSettings(), seeds=ns.seeds, strategies=ns.strategies, fold=ns.fold
    )
    real.run_demo(
        (ns.out or Path("outputs/demo")).resolve(),
        ns.data.resolve(),
        ns.weights.resolve(),
        settings,
        src=ns.src,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
