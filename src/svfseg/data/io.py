"""Reading images and label maps with validation, so bad data fails loudly at the file that is bad.

Images are read with OpenCV and returned RGB (the BAM/SVF repos read BGR and convert). Labels are
single-channel uint8 PNGs of class ids (0 background, 1..num_classes, 255 ignore). A palette PNG read
by OpenCV comes back as colours, not class ids, so a 3-channel label is refused unless all channels are
equal (a grey image saved as RGB).

EXIF orientation: every file is read at its displayed orientation, the one ``PIL.ImageOps.exif_transpose``
gives (a phone photo stored sideways with an Orientation tag comes back upright). The rule is the same for
images and labels: a file without the tag (label PNGs normally have none) is read as stored. Every reader of
photos (datasets, predict.py, the demo, the analysis tools) goes through :func:`read_image`.
"""

from __future__ import annotations

import io
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


EXIF_ORIENTATION_TAG = 0x0112
_JPEG_EXIF_SPAN = 1 << 18  # EXIF sits in an APP1 segment (<= 64 KiB) near the start of a JPEG


def exif_orientation(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The EXIF Orientation (1..8) of encoded image bytes; 1 (as stored) when there is none.

    A cheap byte search skips files without any EXIF block (most files, every label PNG svfseg writes);
    the others are parsed by Pillow, which ``PIL.ImageOps.exif_transpose`` also uses.
    """
    jpeg = bytes(data[:2]) == _JPEG_SOI
    raw = bytes(data[:_JPEG_EXIF_SPAN] if jpeg else data)  # a JPEG's EXIF parses from its first bytes
    if jpeg:
        present = b"Exif\x00\x00" in raw
    else:  # PNG eXIf chunk, WebP EXIF chunk, TIFF (orientation is a baseline tag)
        present = b"eXIf" in raw or b"EXIF" in raw or raw[:4] in (b"II*\x00", b"MM\x00*")
    if not present:
        return 1
    try:
        with Image.open(io.BytesIO(raw)) as im:
            value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF: the pixels are decoded (and checked) by OpenCV as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) turned to its displayed orientation, as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:  # mirrored
        out = array[:, ::-1]
    elif orientation == 3:  # upside down
        out = array[::-1, ::-1]
    elif orientation == 4:  # mirrored upside down
        out = array[::-1]
    elif orientation == 5:  # transpose
        out = array.swapaxes(0, 1)
    elif orientation == 6:  # stored rotated 90 degrees counter-clockwise: turn it clockwise
        out = np.rot90(array, -1)
    elif orientation == 7:  # transverse
        out = array[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:  # stored rotated 90 degrees clockwise: turn it counter-clockwise
        out = np.rot90(array, 1)
    else:
        return array
    return np.ascontiguousarray(out)


def swaps_sides(orientation: int) -> bool:
    """True when the displayed image is the stored one turned by 90 degrees (width and height swap)."""
    return orientation in (5, 6, 7, 8)


def read_image(path: str | Path, *, hint: str | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image at its displayed (EXIF) orientation; corrupt or truncated files raise
    DataFileError naming the file."""
    p = Path(path)
    buf = _read_bytes(p, "image", hint)
    # Decoded as stored, then turned by the file's own EXIF Orientation (the same rule as labels).
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or _truncated_jpeg(buf):
        raise DataFileError(
            f"image {p} is corrupt or truncated (OpenCV cannot decode it completely); re-create it"
        )
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second full-size copy
    return apply_orientation(img, exif_orientation(buf))


def _is_palette_png(buf: np.ndarray) -> bool:
    """A PNG whose IHDR colour type is 3 (palette): its pixels are indices, read with PIL, not as colours."""
    head = buf[:26].tobytes()
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25] == 3


def decode_label(buf: np.ndarray, path: Path) -> np.ndarray:
    """Decode label bytes to (H, W) uint8 class ids, refusing colour and 16-bit PNGs.

    A label is read as stored unless it carries an EXIF Orientation itself (the rule of :func:`read_image`).
    """
    if _is_palette_png(buf):  # VOC-style palette PNG: the palette indices are the class ids
        try:
            with Image.open(io.BytesIO(buf.tobytes())) as im:
                lab = np.asarray(im if im.mode == "P" else im.convert("P"), dtype=np.uint8)
        except (OSError, ValueError) as err:
            raise DataFileError(f"label {path} is corrupt ({err}); re-create it") from err
        return apply_orientation(np.ascontiguousarray(lab), exif_orientation(buf))
    lab = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if lab is None:
        raise DataFileError(f"label {path} is corrupt or not an image; re-create it")
    if lab.dtype != np.uint8:
        raise DataFileError(f"label {path} has dtype {lab.dtype}; labels must be 8-bit single-channel PNGs")
    if lab.ndim == 3:
        if lab.shape[2] == 4 or not (
            np.array_equal(lab[..., 0], lab[..., 1]) and np.array_equal(lab[..., 0], lab[..., 2])
        ):
            raise DataFileError(
                f"label {path} is a colour image ({lab.shape[2]} channels); labels "
                "must be single-channel class ids or palette PNGs whose indices are the class ids"
            )
        lab = np.ascontiguousarray(lab[..., 0])
    return apply_orientation(lab, exif_orientation(buf))


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


def pair_size_message(
    image_path: Path, image_hw: tuple[int, int], label_path: Path, label_hw: tuple[int, int]
) -> str:
    """Why an image and its label differ in size; names EXIF when the image's Orientation tag turned it."""
    text = (
        f"image {image_path} is {image_hw[1]}x{image_hw[0]} (WxH) but label {label_path} is "
        f"{label_hw[1]}x{label_hw[0]}"
    )
    if tuple(label_hw) == (image_hw[1], image_hw[0]) and turned_by_exif(image_path):
        return (
            f"{text}: the image carries an EXIF Orientation tag and is read turned by 90 degrees, as it is "
            "displayed, while the label was made on the stored pixels; turn the label the same way (or save "
            "the image upright without the tag, e.g. with PIL.ImageOps.exif_transpose)"
        )
    return f"{text}; the pair does not belong together"


def turned_by_exif(path: Path) -> bool:
    """True when ``path``'s EXIF Orientation makes :func:`read_image` turn it by 90 degrees."""
    try:
        return swaps_sides(exif_orientation(path.read_bytes()))
    except OSError:
        return False


def read_sample(
    root: str | Path, pair: tuple[str, str], num_classes: int, *, hint: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image and label of a root-relative (image, label) pair; their sizes must agree."""
    image_path, label_path = Path(root) / pair[0], Path(root) / pair[1]
    img = read_image(image_path, hint=hint)
    lab = read_label(label_path, num_classes, hint=hint)
    if img.shape[:2] != lab.shape:
        raise DataFileError(pair_size_message(image_path, img.shape[:2], label_path, lab.shape))
    return img, lab


def label_counts(
    path: str | Path, num_classes: int, *, hint: str | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixel counts per label value (length 256) and the label's (H, W): what list building needs."""
    p = Path(path)
    lab = decode_label(_read_bytes(p, "label", hint), p)
    return check_label_values(lab, num_classes, p), (int(lab.shape[0]), int(lab.shape[1]))


def image_size(path: str | Path, *, hint: str | None = None) -> tuple[int, int]:
    """(H, W) of an image as :func:`read_image` returns it (EXIF orientation applied), from its header only
    (cheap), so list building can check pairs without decoding."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
            jpeg = im.format == "JPEG"
        with p.open("rb") as fh:  # the EXIF block of a JPEG is near its start; other formats are read whole
            head = fh.read(_JPEG_EXIF_SPAN) if jpeg else fh.read()
    except FileNotFoundError:
        raise _missing(p, "image", hint) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFileError(f"image {p} is corrupt or not an image ({exc}); re-create it") from None
    return (int(w), int(h)) if swaps_sides(exif_orientation(head)) else (int(h), int(w))
