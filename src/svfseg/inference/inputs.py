"""Reading and checking the user's images for prediction: supports with masks, and queries.

Every input is read and checked before anything is written, so a bad file stops the run with an error
that names it and leaves the output folder untouched.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svfseg.data.io import DataFileError, decode_label, read_image, turned_by_exif
from svfseg.labels import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class PredictInputError(ValueError):
    """A support or query input that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Support:
    """One annotated example: RGB image and its episode mask (1 foreground, 0 background, 255 ignored)."""

    image: np.ndarray
    mask: np.ndarray
    image_path: Path
    mask_path: Path


def _read_image(path: Path, role: str) -> np.ndarray:
    if not path.is_file():
        raise PredictInputError(f"{role} image {path} does not exist")
    try:
        return read_image(path)
    except DataFileError as err:
        raise PredictInputError(f"{role} image {path} cannot be read: {err}") from err


def check_support_class(value: object) -> int | None:
    """``support_class`` as a class id in 1..254, or None (non-zero pixels are the foreground).

    0 is the background and 255 (``IGNORE_INDEX``) the ignore band of object borders: taking either as the
    class would make the background or the "don't care" band the object to segment.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PredictInputError(
            f"support_class={value!r} is invalid: give the integer class id of the object in the class-id "
            "masks (1..254), or null when non-zero mask pixels are the foreground"
        )
    if value == IGNORE_INDEX:
        raise PredictInputError(
            f"support_class={value} is the ignore label ({IGNORE_INDEX}: object borders, not a class); it would "
            "make the ignore band the foreground. Give the class id of the object (1..254), or null for "
            "0/1 or 0/255 masks"
        )
    if not 1 <= value < IGNORE_INDEX:
        what = "the background" if value == 0 else "outside the class ids"
        raise PredictInputError(
            f"support_class={value} is {what}: give the class id of the object in the class-id masks "
            f"(1..{IGNORE_INDEX - 1}), or null for 0/1 or 0/255 masks"
        )
    return value


def episode_mask(label: np.ndarray, support_class: int | None, path: Path) -> np.ndarray:
    """The binary episode mask of a support label.

    ``support_class=None``: every non-zero pixel is foreground (a 0/1 or 0/255 mask). Otherwise ``label``
    holds class ids: that class is foreground, 255 stays ignored (object borders, as evaluation treats
    them) and every other class is background.
    """
    if support_class is None:
        mask = (label != 0).astype(np.uint8)
        what = "no non-zero pixel"
    else:
        mask = np.where(label == support_class, 1, np.where(label == IGNORE_INDEX, IGNORE_INDEX, 0))
        mask = mask.astype(np.uint8)
        present = sorted(set(np.unique(label).tolist()) - {0, IGNORE_INDEX})
        what = f"no pixel of support_class={support_class} (classes present: {present})"
    if not (mask == 1).any():
        raise PredictInputError(
            f"support mask {path} has {what}: a support must show the object to segment; fix the mask "
            "or drop the example"
        )
    return mask


def read_supports(
    images: Sequence[str | Path], masks: Sequence[str | Path], support_class: int | None = None
) -> list[Support]:
    """Supports from paired image and mask files (same order), each checked (existence, decoding, size)."""
    support_class = check_support_class(support_class)
    images, masks = [Path(p) for p in images], [Path(p) for p in masks]
    if not images:
        raise PredictInputError(
            "no support image given: pass support=[image, ...] and support_masks=[mask, ...]"
        )
    if len(masks) < len(images):
        missing = [str(p) for p in images[len(masks) :]]
        raise PredictInputError(
            f"support image(s) {missing} have no mask: support_masks lists {len(masks)} file(s) for "
            f"{len(images)} images; give one mask per image, in the same order"
        )
    if len(masks) > len(images):
        raise PredictInputError(
            f"support_masks lists {len(masks)} files for {len(images)} support images; extra masks "
            f"{[str(p) for p in masks[len(images) :]]} have no image"
        )
    supports = []
    for image_path, mask_path in zip(images, masks, strict=True):
        image = _read_image(image_path, "support")
        if not mask_path.is_file():
            raise PredictInputError(f"support mask {mask_path} (for {image_path}) does not exist")
        try:
            label = decode_label(np.fromfile(mask_path, dtype=np.uint8), mask_path)
        except DataFileError as err:
            raise PredictInputError(f"support mask {mask_path} cannot be read: {err}") from err
        if label.shape != image.shape[:2]:
            exif = (
                " (the image carries an EXIF Orientation tag and is used as displayed, turned by 90 degrees; "
                "the mask matches the stored pixels: draw it on the upright image, or turn it the same way)"
                if label.shape == image.shape[1::-1] and turned_by_exif(image_path)
                else ""
            )
            raise PredictInputError(
                f"support mask {mask_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}{exif}; a mask must match its image's size"
            )
        supports.append(Support(image, episode_mask(label, support_class, mask_path), image_path, mask_path))
    return supports


def expand_queries(specs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Query files from files, folders (their images, sorted) and glob patterns, in the order given."""
    items = [specs] if isinstance(specs, (str, Path)) else list(specs)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(item)):
            found += sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
        else:
            raise PredictInputError(f"query {item} is not a file, a folder or a glob pattern that matches")
    if not found:
        raise PredictInputError(
            f"query {list(map(str, items))} matches no image file ({', '.join(IMAGE_SUFFIXES)})"
        )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def check_queries(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """(H, W) of every query, decoding each once so that a bad file fails before any output exists."""
    return [tuple(_read_image(p, "query").shape[:2]) for p in paths]  # type: ignore[misc]


def read_query(path: Path) -> np.ndarray:
    return _read_image(path, "query")
