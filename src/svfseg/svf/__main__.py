"""``python -m svfseg.svf export CKPT --out DIR [--force]``: the merged plain model and the SVF artifact of a run."""

from __future__ import annotations

import argparse
import json
import sys

from svfseg.inference.export import export_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m svfseg.svf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export", help="write DIR/model.pt (merged, plain convs), DIR/svf.pt, DIR/run.json"
    )
    export.add_argument("ckpt", help="a train.py checkpoint or run directory")
    export.add_argument("--out", required=True, help="output folder (new or empty)")
    export.add_argument(
        "--force",
        action="store_true",
        help="replace a previous export in --out (its model.pt, svf.pt, run.json; a stale svf.pt is "
        "removed); a folder holding any other file is still refused",
    )
    args = parser.parse_args(argv)
    try:
        record = export_run(args.ckpt, args.out, force=args.force)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **record["files"], "merged_svf_layers": record["merged_svf_layers"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
