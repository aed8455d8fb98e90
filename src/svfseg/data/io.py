"""Reading images and label maps with validation, so bad data fails loudly at the file that is bad.

Images are read with OpenCV and returned RGB (the reference code reads BGR and converts). Labels are
single-channel uint8 PNGs of class ids (0 background, 1..num_classes, 255 ignore). A palette PNG read
by OpenCV comes back as colours, not class ids, so a 3-channel label is refused unless all channels are
equal (a grey image saved as RGB).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from svfseg.labels import IGNORE_INDEX

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


class DataFileError(ValueError):
    """A data file exists but its content is unusable (corrupt, wrong format, bad values, size mismatch)."""


class MissingDataError(FileNotFoundError):
    """A data file the lists refer to is not on disk."""


def _missing(path: Path, what: str, hint: str | None) -> MissingDataError:
    fix = f"; prepare the dataset with: {hint}" if hint else ""
    return MissingDataError(f"{what} {path} does not exist{fix}")


def _read_bytes(path: Path, what: str, hint: str | None) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _missing(path, what, hint) from None
    except IsADirectoryError:
        raise DataFileError(f"{what} {path} is a directory, not a file") from None
    if not data:
        raise DataFileError(f"{what} {path} is empty (0 bytes); re-create it")
    return np.frombuffer(data, dtype=np.uint8)


def _truncated_jpeg(buf: np.ndarray) -> bool:
    """OpenCV decodes a cut-off JPEG with only a warning; a complete one ends with the EOI marker."""
    head = buf[:2].tobytes()
    if head != _JPEG_SOI:
        return False
    return _JPEG_EOI not in buf[-4096:].tobytes()


def read_image(path: str | Path, *, hint: str | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image; corrupt or truncated files raise DataFileError naming the file."""
    p = Path(path)
    buf = _read_bytes(p, "image", hint)
    # Labels (and COCO's polygons) are in stored pixel order, so EXIF rotation must not be applied.
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or _truncated_jpeg(buf):
        raise DataFileError(
            f"image {p} is corrupt or truncated (OpenCV cannot decode it completely); re-create it"
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_label(buf: np.ndarray, path: Path) -> np.ndarray:
    """Decode label bytes to (H, W) uint8 class ids, refusing colour and 16-bit PNGs."""
    lab = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DataFileError(f"label {path} is corrupt or not an image; re-create it")
    if lab.dtype != np.uint8:
        raise DataFileError(f"label {path} has dtype {lab.dtype}; labels must be 8-bit single-channel PNGs")
    if lab.ndim == 3:
        if lab.shape[2] == 4 or not (
            np.array_equal(lab[..., 0], lab[..., 1]) and np.array_equal(lab[..., 0], lab[..., 2])
        ):
            raise DataFileError(
                f"label {path} is a colour image ({lab.shape[2]} channels), e.g. a VOC palette PNG; labels "
                "must be single-channel class ids (python -m svfseg.data.prepare converts palette PNGs)"
            )
        lab = np.ascontiguousarray(lab[..., 0])
    return lab


def check_label_values(label: np.ndarray, num_classes: int, path: Path | str) -> np.ndarray:
    """Pixel counts per value (length 256); raises DataFileError if a value is outside {0..num_classes, 255}."""
    counts = np.bincount(label.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts).tolist() if num_classes < v < IGNORE_INDEX]
    if bad:
        raise DataFileError(
            f"label {path} has values {bad} outside {{0..{num_classes}, 255}} "
            f"({int(counts[bad].sum())} pixels); it was not made for this dataset's {num_classes} classes"
        )
    return counts


def read_label(path: str | Path, num_classes: int, *, hint: str | None = None) -> np.ndarray:
    """An (H, W) uint8 label map, with its values checked against ``num_classes``."""
    p = Path(path)
    lab = decode_label(_read_bytes(p, "label", hint), p)
    check_label_values(lab, num_classes, p)
    return lab


def read_sample(
    root: str | Path, pair: tuple[str, str], num_classes: int, *, hint: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image and label of a root-relative (image, label) pair; their sizes must agree."""
    image_path, label_path = Path(root) / pair[0], Path(root) / pair[1]
    img = read_image(image_path, hint=hint)
    lab = read_label(label_path, num_classes, hint=hint)
    if img.shape[:2] != lab.shape:
        raise DataFileError(
            f"image {image_path} is {img.shape[1]}x{img.shape[0]} (WxH) but label {label_path} is "
            f"{lab.shape[1]}x{lab.shape[0]}; the pair does not belong together"
        )
    return img, lab


def label_counts(
    path: str | Path, num_classes: int, *, hint: str | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixel counts per label value (length 256) and the label's (H, W): what list building needs."""
    p = Path(path)
    lab = decode_label(_read_bytes(p, "label", hint), p)
    return check_label_values(lab, num_classes, p), (int(lab.shape[0]), int(lab.shape[1]))


def image_size(path: str | Path, *, hint: str | None = None) -> tuple[int, int]:
    """(H, W) of an image from its header only (cheap), so list building can check pairs without decoding."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
    except FileNotFoundError:
        raise _missing(p, "image", hint) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFileError(f"image {p} is corrupt or not an image ({exc}); re-create it") from None
    return int(h), int(w)
