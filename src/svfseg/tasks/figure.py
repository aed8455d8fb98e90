"""A picture of predict.py at work: one support with its mask, and the overlays of queries of its class.

    python -m svfseg.tasks.figure CKPT --out docs/images/predict_overlays.png [--queries 4]
    python -m svfseg.tasks.figure --predictions PREDICT_RUN_DIR --out FIGURE.png [--support-class C]

The support and the queries come from the run's own fixed evaluation episodes (the first class of the
fold that has enough episodes), so the picture shows the model on classes it never trained on. It is an
application tool: it builds the run's DataModule (``svfseg.tasks.builders``) around the inference API.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from svfseg.files import atomic_write
from svfseg.inference.inputs import read_supports
from svfseg.inference.outputs import overlay
from svfseg.inference.predictor import Predictor, resolve_checkpoint
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.resolve import TrainRun

SUPPORT_COLOUR = np.array([40, 200, 80], np.float32)
TILE = 192


def _tile(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).resize((TILE, TILE), Image.Resampling.BILINEAR)


def support_view(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    fg = mask == 1
    out[fg] = 0.5 * out[fg] + 0.5 * SUPPORT_COLOUR
    return out.round().astype(np.uint8)


def make_figure(ckpt: str | Path, out: str | Path, *, n_queries: int = 4, device: str = "cpu") -> Path:
    predictor = Predictor.from_checkpoint(resolve_checkpoint(ckpt), device=device)
    module_cfg = OmegaConf.create(predictor.run_config)
    datamodule = build_datamodule(TrainRun.from_config(module_cfg))
    datamodule.setup("test")
    table = datamodule.eval_dataloader(int(module_cfg.dataset.eval_seeds[0])).dataset.table
    root = Path(str(module_cfg.dataset.root))
    for class_id in table.classes:
        episodes = [i for i, c in enumerate(table.class_ids) if c == class_id]
        if len(episodes) > n_queries:
            break
    else:
        raise ValueError(f"no class has more than {n_queries} evaluation episodes; lower --queries")
    first = episodes[0]
    img, lab = table.supports[first][0]
    supports = read_supports([root / img], [root / lab], class_id)
    queries = list(dict.fromkeys(root / table.queries[i][0] for i in episodes[1:]))[:n_queries]
    tiles = [_tile(support_view(supports[0].image, supports[0].mask))]
    tiles += [_tile(overlay(p.image, p.mask)) for p in predictor.predict(supports, queries)]
    return _save_row(tiles, out)


def figure_from_predictions(
    predictions: str | Path, out: str | Path, *, support_class: int | None = None
) -> Path:
    """The same picture from a finished ``predict.py`` run: its first support and its written overlays.

    It shows exactly the masks the README's example writes (``predictions.json``, ``overlays/``).
    """
    folder = Path(predictions)
    record = json.loads((folder / "predictions.json").read_text())
    first = record["supports"][0]
    supports = read_supports([Path(first["image"])], [Path(first["mask"])], support_class)
    tiles = [_tile(support_view(supports[0].image, supports[0].mask))]
    for query in record["queries"]:
        with Image.open(folder / query["overlay"]) as image:
            tiles.append(_tile(np.asarray(image.convert("RGB"))))
    return _save_row(tiles, out)


def _save_row(tiles: list[Image.Image], out: str | Path) -> Path:
    canvas = Image.new("RGB", (TILE * len(tiles) + 8 * (len(tiles) - 1), TILE), "white")
    for k, tile in enumerate(tiles):
        canvas.paste(tile, (k * (TILE + 8), 0))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    small = canvas.quantize(colors=256, method=Image.Quantize.FASTOCTREE)  # a small PNG
    # atomic: a failed write keeps the previous figure; the temporary name has no .png, hence format=
    return atomic_write(path, lambda tmp: small.save(tmp, format="PNG", optimize=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svfseg.tasks.figure", description=__doc__.splitlines()[0]
    )
    parser.add_argument("ckpt", nargs="?", help="a train.py checkpoint or run directory")
    parser.add_argument("--out", required=True)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument(
        "--predictions",
        help="instead of CKPT: a predict.py output folder (its predictions.json and overlays)",
    )
    parser.add_argument(
        "--support-class", type=int, default=None, help="with --predictions: predict's support_class"
    )
    args = parser.parse_args(argv)
    if (args.ckpt is None) == (args.predictions is None):
        parser.error("give a checkpoint (CKPT) or --predictions DIR, not both")
    if args.predictions:
        print(figure_from_predictions(args.predictions, args.out, support_class=args.support_class))
    else:
        print(make_figure(args.ckpt, args.out, n_queries=args.queries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
