"""Clothing Co-Parsing (CCP) as a few-shot dataset in the own-dataset folder layout.

CCP (Yang, Luo and Lin, "Clothing Co-Parsing by Joint Image Segmentation and Labeling", CVPR 2014;
public release github.com/bearpaw/clothing-co-parsing, Apache-2.0) has 1,004 street-fashion photos with
pixel labels: ``photos/0001.jpg``..``1004.jpg``, ``annotations/pixel-level/<id>.mat`` (variable
``groundtruth``, HxW uint8, value v = ``label_list[v]``) and ``label_list.mat`` (59 names, 0 = ``null``).

``python -m svfseg.dataprep.prepare ccp --out data/ccp [--src SRC]`` writes the layout of
:mod:`svfseg.data.folder_layout` by the design in ``svfseg/resources/ccp/design.json`` (the design is data;
``python -m svfseg.dataprep.ccp design --src SRC`` recomputes it, see :func:`make_design`):

* background (0): ``null``, ``skin`` and ``hair`` (the person and the scene, not clothing), so the task
  is "this clothing item against everything else";
* classes 1..31: the clothing labels covering >= 0.5 % of the pixels of at least 20 photos, numbered in
  the order of the label list;
* ignore (255): every other clothing label (too rare to be a class, but clothing, so neither background);
* the train/val split and the 4 folds stored in the design.

The source is ``--src`` (a clone or copy of the public release), else the folder named by
``SVFSEG_CCP_SRC``, else the release archive downloaded from ``--url`` (default: the public repository's
archive). Every file used is checked against the sha256 manifest ``resources/ccp/manifest.sha256``
(the members, not the archive, whose bytes the code host does not keep stable); a mismatch is refused
naming the file. The output is written into a hidden sibling folder, checked with
:func:`svfseg.dataprep.folder_check.check_folder`, and only then renamed to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io
from PIL import Image

from svfseg.data.folder_layout import CLASSES_FILE, FOLDS_FILE, IMAGE_DIR, LABEL_DIR, SPLIT_FILES
from svfseg.data.lists.label_index import default_workers
from svfseg.dataprep.folder_check import check_folder
from svfseg.dataprep.val_split import stratified_val_ids
from svfseg.files import atomic_write_bytes, atomic_write_text
from svfseg.labels import IGNORE_INDEX

SOURCE_ENV = "SVFSEG_CCP_SRC"
ARCHIVE_URL = "https://github.com/bearpaw/clothing-co-parsing/archive/refs/heads/master.zip"
NUM_PHOTOS = 1004
LABEL_LIST = "label_list.mat"
LICENSE = "LICENSE"
BACKGROUND_NAMES = ("null", "skin", "hair")
CITATION = (
    "Wei Yang, Ping Luo, Liang Lin. Clothing Co-Parsing by Joint Image Segmentation and Labeling. CVPR 2014."
)
_SERIAL_BELOW = 32
_DOWNLOAD_TIMEOUT_S = 60


class CCPError(ValueError):
    """The CCP source or its conversion is unusable; the message names the file and the fix."""


def photo_name(id_: str) -> str:
    return f"photos/{id_}.jpg"


def mat_name(id_: str) -> str:
    return f"annotations/pixel-level/{id_}.mat"


def all_ids() -> list[str]:
    return [f"{i:04d}" for i in range(1, NUM_PHOTOS + 1)]


def _resource(name: str) -> Path:
    return Path(str(resources.files("svfseg") / "resources" / "ccp" / name))


def default_manifest() -> Path:
    return _resource("manifest.sha256")


def default_design() -> Path:
    return _resource("design.json")


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """Where the release's files are read: a folder (``kind='dir'``) or a zip archive whose members sit
    under ``prefix`` (a code-host archive puts them under ``<repo>-<ref>/``)."""

    kind: str
    path: str
    prefix: str = ""

    def describe(self) -> str:
        return f"{self.path}" if self.kind == "dir" else f"archive {self.path}"


# Open archives per process: forked workers must not share the parent's file offset.
_ZIPS: dict[tuple[int, str], zipfile.ZipFile] = {}


def read_member(source: Source, name: str) -> bytes:
    """The bytes of release file ``name`` (a posix path relative to the release root)."""
    if source.kind == "dir":
        path = Path(source.path) / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise CCPError(
                f"{name} is missing from the CCP source {source.path}; it must hold the public release's "
                "photos/, annotations/pixel-level/ and label_list.mat (clone github.com/bearpaw/clothing-co-parsing)"
            ) from None
    key = (os.getpid(), source.path)
    zf = _ZIPS.get(key)
    if zf is None:
        zf = _ZIPS[key] = zipfile.ZipFile(source.path)
    try:
        return zf.read(source.prefix + name)
    except KeyError:
        raise CCPError(f"{name} is missing from the archive {source.path}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CCPError(f"{name} cannot be read from the archive {source.path} ({exc})") from None


def open_archive(path: Path) -> Source:
    """A zip of the release: its members are found under the folder that holds ``label_list.mat``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CCPError(f"{path} is not a readable zip archive ({exc}); download it again") from None
    roots = sorted(
        (n[: -len(LABEL_LIST)] for n in names if n == LABEL_LIST or n.endswith("/" + LABEL_LIST)),
        key=len,
    )
    if not roots:
        raise CCPError(f"the archive {path} holds no {LABEL_LIST}; it is not the CCP release")
    return Source("zip", str(path), roots[0])


def read_manifest(path: str | Path) -> dict[str, str]:
    """``sha256sum``-style lines (``<64 hex>  <path>``) -> {path: hex}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CCPError(f"manifest {path} cannot be read ({exc.strerror or exc})") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not all(ch in "0123456789abcdef" for ch in digest) or not name:
            raise CCPError(f"manifest {path} line {n} is not '<sha256 hex>  <path>': {line!r}")
        out[name] = digest
    return out


def verify(name: str, data: bytes, manifest: Mapping[str, str], source: Source) -> None:
    expected = manifest.get(name)
    if expected is None:
        raise CCPError(f"{name} is not in the sha256 manifest, so it cannot be verified")
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise CCPError(
            f"{name} from {source.describe()} has sha256 {got}, the manifest expects {expected}: the file "
            "differs from the public release this design was made for (a corrupt download or another "
            "version); get the release again"
        )


def label_list(data: bytes) -> list[str]:
    try:
        cell = scipy.io.loadmat(io.BytesIO(data))["label_list"]
    except (KeyError, ValueError, OSError, TypeError) as exc:
        raise CCPError(f"{LABEL_LIST} holds no readable label_list cell array ({exc})") from None
    return [str(x[0]) if np.size(x) else "" for x in cell.ravel()]


def groundtruth(data: bytes, name: str) -> np.ndarray:
    try:
        gt = scipy.io.loadmat(io.BytesIO(data))["groundtruth"]
    except (KeyError, ValueError, OSError, TypeError) as exc:
        raise CCPError(f"{name} holds no readable 'groundtruth' matrix ({exc})") from None
    if gt.ndim != 2 or gt.dtype != np.uint8:
        raise CCPError(f"{name}: groundtruth is {gt.dtype} of shape {gt.shape}, expected a 2-D uint8 map")
    return gt


# --------------------------------------------------------------------------------------------- design


def load_design(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path is not None else default_design()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CCPError(f"design file {path} cannot be read ({exc})") from None


def lookup_table(design: Mapping[str, Any]) -> np.ndarray:
    """Original CCP label value -> class id of the output (0 background, 1..C, 255 ignore)."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for v in design["background_labels"]:
        lut[v] = 0
    for c in design["classes"]:
        lut[c["label"]] = c["id"]
    return lut


def _histograms(source: Source, ids: Sequence[str]) -> np.ndarray:
    return np.array(
        [
            np.bincount(groundtruth(read_member(source, mat_name(i)), mat_name(i)).ravel(), minlength=256)
            for i in ids
        ]
    )


def _fold_score(present: np.ndarray, pool: np.ndarray, folds: Sequence[Sequence[int]]) -> tuple[int, ...]:
    kept = []
    for fold in folds:
        mask = np.zeros(present.shape[1], bool)
        mask[list(fold)] = True
        keep = ~present[:, mask].any(1)
        kept.append(int((keep & pool[:, ~mask].any(1)).sum()))
    return tuple(sorted(kept))


def _local_search(
    present: np.ndarray, pool: np.ndarray, folds: list[list[int]]
) -> tuple[tuple[int, ...], list[list[int]]]:
    """Best-improvement search over swaps of two classes between folds and moves that keep fold sizes
    within one; the score is the sorted tuple of per-fold counts, compared lexicographically (leximin)."""
    best = _fold_score(present, pool, folds)
    while True:
        found: tuple[tuple[int, ...], list[list[int]]] | None = None
        for a in range(len(folds)):
            for b in range(a + 1, len(folds)):
                candidates = []
                for x in folds[a]:
                    for y in folds[b]:
                        cand = [list(f) for f in folds]
                        cand[a].remove(x)
                        cand[a].append(y)
                        cand[b].remove(y)
                        cand[b].append(x)
                        candidates.append(cand)
                for src, dst in ((a, b), (b, a)):
                    if len(folds[src]) > len(folds[dst]):
                        for x in folds[src]:
                            cand = [list(f) for f in folds]
                            cand[src].remove(x)
                            cand[dst].append(x)
                            candidates.append(cand)
                for cand in candidates:
                    score = _fold_score(present, pool, cand)
                    if score > best and (found is None or score > found[0]):
                        found = (score, cand)
        if found is None:
            return best, [sorted(f) for f in folds]
        best, folds = found[0], [sorted(f) for f in found[1]]


def make_design(source: Source) -> dict[str, Any]:
    """Compute the class, split and fold design from the release (run once; the result is committed)."""
    names = label_list(read_member(source, LABEL_LIST))
    ids = all_ids()
    hist = _histograms(source, ids)
    rule = {"min_fraction": 0.005, "min_photos": 20}
    frac = hist / hist.sum(1, keepdims=True)
    background = sorted(names.index(n) for n in BACKGROUND_NAMES)
    big = (frac >= rule["min_fraction"]).sum(0)
    labels = [v for v in range(len(names)) if v not in background and big[v] >= rule["min_photos"]]
    ignored = [v for v in range(len(names)) if v not in background and v not in labels]
    classes = [
        {"id": k + 1, "name": names[v], "label": v, "photos": int(big[v])} for k, v in enumerate(labels)
    ]
    split_rule = {"seed": "ccp-split-0", "val_fraction": 0.2, "min_val": 6, "min_pixels": 2048}
    pool = hist >= split_rule["min_pixels"]
    val = stratified_val_ids(
        pool[:, labels],  # labels ascend, so ties between classes fall as before
        ids,
        val_fraction=split_rule["val_fraction"],
        min_val=split_rule["min_val"],
        seed=split_rule["seed"],
    )
    val_set = set(val)
    train_rows = [k for k, i in enumerate(ids) if i not in val_set]
    present = hist[train_rows][:, labels] > 0
    train_pool = pool[train_rows][:, labels]
    num_folds, starts = 4, 16
    counts = present.sum(0)
    by_freq = sorted(range(len(labels)), key=lambda j: (-counts[j], j))
    best: tuple[tuple[int, ...], list[list[int]]] | None = None
    for start in range(starts):
        order = by_freq if start == 0 else random.Random(start).sample(by_freq, len(by_freq))
        folds = [sorted(order[k::num_folds]) for k in range(num_folds)]
        result = _local_search(present, train_pool, folds)
        if best is None or result[0] > best[0]:
            best = result
    assert best is not None
    folds = sorted(([j + 1 for j in f] for f in best[1]), key=min)
    stats = []
    for k, fold in enumerate(folds):
        mask = np.zeros(len(labels), bool)
        mask[[c - 1 for c in fold]] = True
        keep = ~present[:, mask].any(1)
        stats.append(
            {
                "fold": k,
                "novel": [names[labels[c - 1]] for c in fold],
                "kept": int(keep.sum()),
                "kept_with_base_pixel": int((keep & present[:, ~mask].any(1)).sum()),
                "kept_with_base_min_pixels": int((keep & train_pool[:, ~mask].any(1)).sum()),
            }
        )
    return {
        "dataset": "Clothing Co-Parsing (CCP), the 1,004 photos with pixel labels",
        "source": "github.com/bearpaw/clothing-co-parsing (commit fe34fb7), Apache-2.0",
        "citation": CITATION,
        "photos": NUM_PHOTOS,
        "label_list": names,
        "background_labels": background,
        "class_rule": {
            **rule,
            "text": "a clothing label is a class when it covers >= min_fraction of the pixels of at least "
            "min_photos photos; classes are numbered in label-list order",
        },
        "classes": classes,
        "ignored_labels": [
            {"label": v, "name": names[v], "photos": int((hist[:, v] > 0).sum())} for v in ignored
        ],
        "split": {
            **split_rule,
            "text": "classes, rarest first (photos where the class covers >= min_pixels), take photos in the "
            "order of sha256(seed:id) into val until the class has max(min_val, ceil(val_fraction x its "
            "photos)) val photos; the same order then fills val up to round(val_fraction x 1004); all "
            "other photos are train",
            "val": val,
        },
        "fold_rule": {
            "folds": num_folds,
            "starts": starts,
            "text": "balanced fold sizes (8, 8, 8, 7); maximise, leximin over folds, the number of training "
            "photos the leakage filter keeps (no pixel of a novel class) that hold a base class covering "
            ">= min_pixels; best-improvement local search (swaps between folds, moves between folds "
            "whose sizes differ) from the round-robin deal by training photos (start 0) and random.Random"
            "(s) shuffles (starts 1..15); folds ordered by their smallest class id",
        },
        "folds": {str(k): f for k, f in enumerate(folds)},
        "filter": stats,
        "train_photos": len(train_rows),
    }


# --------------------------------------------------------------------------------------------- convert


def _convert_one(task: tuple[Source, str, str, bytes, str, str]) -> tuple[str, str | None]:
    source, id_, out, lut_bytes, photo_sha, mat_sha = task
    lut = np.frombuffer(lut_bytes, np.uint8)
    try:
        photo = read_member(source, photo_name(id_))
        mat = read_member(source, mat_name(id_))
        verify(photo_name(id_), photo, {photo_name(id_): photo_sha}, source)
        verify(mat_name(id_), mat, {mat_name(id_): mat_sha}, source)
        gt = groundtruth(mat, mat_name(id_))
        try:
            with Image.open(io.BytesIO(photo)) as im:
                width, height = im.size
        except OSError as exc:
            raise CCPError(f"{photo_name(id_)} is not a readable image ({exc})") from None
        if gt.shape != (height, width):
            raise CCPError(
                f"{mat_name(id_)} is {gt.shape[1]}x{gt.shape[0]} (WxH) but {photo_name(id_)} is "
                f"{width}x{height}"
            )
        ok, png = cv2.imencode(".png", lut[gt])
        if not ok:
            raise CCPError(f"could not encode the label of {id_}")
        atomic_write_bytes(Path(out) / LABEL_DIR / f"{id_}.png", png.tobytes())
        atomic_write_bytes(Path(out) / IMAGE_DIR / f"{id_}.jpg", photo)
    except (CCPError, OSError) as exc:
        return id_, str(exc)
    return id_, None


def resolve_source(src: str | Path | None, url: str | None, download_dir: Path) -> tuple[Source, Path | None]:
    """(source, downloaded archive to delete afterwards or None): --src, else $SVFSEG_CCP_SRC, else --url."""
    src = src or os.environ.get(SOURCE_ENV) or None
    if src:
        path = Path(src)
        if path.is_dir():
            return Source("dir", str(path)), None
        if path.is_file() and zipfile.is_zipfile(path):
            return open_archive(path), None
        raise CCPError(
            f"the CCP source {path} is neither a folder nor a zip archive of the public release; clone "
            "github.com/bearpaw/clothing-co-parsing (or omit --src to download it)"
        )
    url = url or ARCHIVE_URL
    download_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".ccp-download-", suffix=".zip", dir=download_dir)
    target = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, fh, 1 << 20)
        return open_archive(target), target
    except (OSError, CCPError) as exc:
        target.unlink(missing_ok=True)
        raise CCPError(
            f"could not download the CCP release from {url} ({exc}); nothing was written. Check the network, "
            "or clone github.com/bearpaw/clothing-co-parsing and pass --src (or set SVFSEG_CCP_SRC)"
        ) from None


@dataclass(frozen=True)
class ConvertReport:
    out: Path
    source: str
    train: int
    val: int
    seconds: float
    folds: tuple[Any, ...]


def convert(
    out: str | Path,
    *,
    src: str | Path | None = None,
    url: str | None = None,
    manifest: str | Path | None = None,
    design: str | Path | None = None,
    ids: Sequence[str] | None = None,
    workers: int | None = None,
    force: bool = False,
) -> ConvertReport:
    """Convert the release into ``out`` (see the module docstring); refuses without touching ``out``."""
    start = time.perf_counter()
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise CCPError(
            f"{out} exists; remove it or pass --force to replace it once the new conversion is complete"
        )
    spec = load_design(design)
    sums = read_manifest(manifest if manifest is not None else default_manifest())
    wanted = all_ids() if ids is None else list(dict.fromkeys(ids))
    unknown = [i for i in wanted if i not in set(all_ids())]
    if unknown:
        raise CCPError(f"--ids {unknown}: CCP ids are 0001..{NUM_PHOTOS:04d}")
    missing = [n for i in wanted for n in (photo_name(i), mat_name(i)) if n not in sums] + [
        n for n in (LABEL_LIST, LICENSE) if n not in sums
    ]
    if missing:
        raise CCPError(
            f"the manifest has no sha256 for {missing[:5]} ({len(missing)} files); it cannot verify them"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    source, downloaded = resolve_source(src, url, out.parent)
    tmp = out.with_name(f".{out.name}.converting-{os.getpid()}")
    try:
        names_data = read_member(source, LABEL_LIST)
        verify(LABEL_LIST, names_data, sums, source)
        if label_list(names_data) != spec["label_list"]:
            raise CCPError(f"{LABEL_LIST} of {source.describe()} names other labels than the design expects")
        license_data = read_member(source, LICENSE)
        verify(LICENSE, license_data, sums, source)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / IMAGE_DIR).mkdir(parents=True)
        (tmp / LABEL_DIR).mkdir()
        lut = lookup_table(spec).tobytes()
        tasks = [(source, i, str(tmp), lut, sums[photo_name(i)], sums[mat_name(i)]) for i in wanted]
        n = default_workers() if workers is None else workers
        if n <= 1 or len(tasks) < _SERIAL_BELOW:
            results = [_convert_one(t) for t in tasks]
        else:
            with get_context().Pool(n) as pool:
                results = pool.map(_convert_one, tasks, chunksize=16)
        problems = [p for _, p in results if p]
        if problems:
            raise CCPError(
                f"{len(problems)} file(s) of {source.describe()} refused, nothing written to {out}:\n"
                + "\n".join(f"  - {p}" for p in problems[:20])
                + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            )
        val_set = set(spec["split"]["val"])
        train = [i for i in wanted if i not in val_set]
        val = [i for i in wanted if i in val_set]
        classes = sorted(spec["classes"], key=lambda c: c["id"])
        atomic_write_bytes(tmp / LICENSE, license_data)
        atomic_write_text(tmp / "SOURCE.md", _source_note(spec))
        atomic_write_text(tmp / CLASSES_FILE, "".join(f"{c['name']}\n" for c in classes))
        atomic_write_text(tmp / FOLDS_FILE, json.dumps(spec["folds"], indent=1) + "\n")
        atomic_write_text(tmp / SPLIT_FILES["val"], "".join(f"{i}\n" for i in val))
        atomic_write_text(tmp / SPLIT_FILES["train"], "".join(f"{i}\n" for i in train))
        report = check_folder(tmp, workers=workers)
        if not report.ok:
            raise CCPError(
                f"the converted folder fails the layout check, nothing written to {out} (with --ids, every "
                "novel class needs a val photo):\n" + "\n".join(f"  - {p}" for p in report.problems[:20])
            )
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        if out.exists() or out.is_symlink():
            os.replace(out, old)
        os.replace(tmp, out)
        if old.is_symlink() or old.is_file():
            old.unlink()
        elif old.exists():
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if source.kind == "zip":
            zf = _ZIPS.pop((os.getpid(), source.path), None)
            if zf is not None:
                zf.close()
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
    return ConvertReport(
        out,
        source.describe() if downloaded is None else url or ARCHIVE_URL,
        len(train),
        len(val),
        time.perf_counter() - start,
        report.folds,
    )


def _source_note(spec: Mapping[str, Any]) -> str:
    return (
        "# Clothing Co-Parsing (CCP) in the svfseg folder layout\n\n"
        f"Made by `python -m svfseg.dataprep.prepare ccp` from the public release {spec['source']}; "
        "LICENSE is the release's own. Cite:\n\n"
        f"{spec['citation']}\n\n"
        f"Background (0): {', '.join(spec['label_list'][v] for v in spec['background_labels'])}. "
        "Classes: classes.txt. Ignored (255): "
        f"{', '.join(x['name'] for x in spec['ignored_labels'])}. "
        "The design (split and folds) is svfseg's resources/ccp/design.json; see docs/own-dataset.md.\n"
    )


def dump_json(obj: Any, indent: str = "") -> str:
    """JSON with a dict's keys one per line, but lists of scalars and the dicts inside lists on one line
    each (a design a person can read and diff)."""
    inner = indent + " "
    if isinstance(obj, dict) and obj and not indent.endswith("  "):
        items = [f"{inner}{json.dumps(k)}: {dump_json(v, inner).strip()}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}" + ("\n" if not indent else "")
    if isinstance(obj, list) and any(isinstance(x, dict) for x in obj):
        items = [f"{inner}{json.dumps(x)}" for x in obj]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    return json.dumps(obj)


def write_manifest(source: Source, out: str | Path) -> int:
    """Maintainer tool: the sha256 of every file the converter reads, sha256sum format."""
    names = [LABEL_LIST, LICENSE] + [n for i in all_ids() for n in (photo_name(i), mat_name(i))]
    lines = [f"{hashlib.sha256(read_member(source, n)).hexdigest()}  {n}\n" for n in names]
    atomic_write_text(out, "".join(lines))
    return len(lines)


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--src",
        help=f"the public release (a clone or an unpacked/zipped archive); default ${SOURCE_ENV}, else download",
    )
    parser.add_argument("--out", required=True, help="output dataset folder (the folder layout)")
    parser.add_argument("--url", help=f"archive to download when there is no source (default {ARCHIVE_URL})")
    parser.add_argument("--manifest", help="sha256 manifest to verify against (default: the shipped one)")
    parser.add_argument("--ids", nargs="+", help="convert only these photo ids (tests); default all 1,004")
    parser.add_argument("--workers", type=int, help="processes (default: CPUs, at most 8)")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing --out once the conversion is complete"
    )


def run(args: argparse.Namespace) -> int:
    try:
        rep = convert(
            args.out,
            src=args.src,
            url=args.url,
            manifest=args.manifest,
            ids=args.ids,
            workers=args.workers,
            force=args.force,
        )
    except CCPError as exc:
        print(f"ccp: {exc}")
        return 1
    print(
        f"wrote {rep.out} from {rep.source}: {rep.train} train / {rep.val} val photos in {rep.seconds:.1f} s"
    )
    names = (rep.out / CLASSES_FILE).read_text(encoding="utf-8").splitlines()
    for f in rep.folds:
        novel = ", ".join(names[c - 1] for c in f.novel)
        print(
            f"fold {f.fold}: novel [{novel}]; the leakage filter keeps {f.kept} training photos "
            f"({f.kept_with_base} with a base class)"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m svfseg.dataprep.ccp", description="CCP maintainer tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("design", "recompute design.json"), ("manifest", "recompute manifest.sha256")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--src", required=True, help="the public release (folder or zip)")
        s.add_argument("--out", help="file to write (default: the shipped resource)")
    args = p.parse_args(argv)
    source, _ = resolve_source(args.src, None, Path("."))
    if args.cmd == "manifest":
        n = write_manifest(source, args.out or default_manifest())
        print(f"wrote {args.out or default_manifest()}: {n} files")
        return 0
    spec = make_design(source)
    atomic_write_text(args.out or default_design(), dump_json(spec))
    for f in spec["filter"]:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
