"""``python -m svfseg.pretrain``: build (or reuse) proxy-pretrained backbone weights; prints the file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields

from svfseg.pretrain.proxy import ProxySpec, ProxyWeightsError, build_proxy_weights


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m svfseg.pretrain",
        description="Pretrain a narrow deep-stem ResNet on procedural proxy categories (disjoint from every "
        "few-shot synthetic class) and write PSPNet-v2-layout weights for backbone.pretrained=<file>. "
        "Cached: a second call with the same recipe returns at once.",
    )
    p.add_argument("--out", default="initmodel/proxy", help="folder of the weight file and its .json record")
    for f in fields(ProxySpec):
        if f.name == "version":
            continue
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"default {f.default}",
        )
    p.add_argument("--quiet", action="store_true", help="print only the weight file's path")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    out, quiet = args.pop("out"), args.pop("quiet")
    try:
        spec = ProxySpec(**args)
        result = build_proxy_weights(spec, out, log=None if quiet else print)
    except (ValueError, ProxyWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if quiet:
        print(result.path)
        return 0
    held = result.record["held_out"]
    print(
        f"{'built' if result.built else 'cached'}: {result.path}\n"
        f"  held-out proxy images: pixel accuracy {held['pixel_accuracy']:.3f}, foreground IoU "
        f"{held['foreground_iou']:.3f}, category mIoU {held['category_miou']:.3f} "
        f"(built in {result.record['seconds']:.0f} s)\n"
        f"  use it: python train.py {result.record['use']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
