"""Few-shot episodes: seeded training episodes and fixed, hashed evaluation episode tables.

Class choice (differs from the BAM/SVF repos on purpose). Their ``SemData.__getitem__`` picks the
query's class among *all* fold classes present in its label, with no pixel threshold, so a class covering
a handful of query pixels can be chosen although the image only entered the list through another class.
Here the class is drawn among the query's *pool* classes: the fold classes whose pool holds the image,
i.e. those covering ``>= min_pixels`` of it (the list rule of :mod:`svfseg.data.lists.selection`). Every query
foreground is then as large as a support's, and the choice needs no label read. Supports: ``shot``
distinct images of the class pool, never the query; a pool too small for that is refused when the dataset
or table is built.

Training: a sample is a pure function of ``(seed, epoch, index)``; the class, the supports and every
image's augmentation come from one ``SeedSequence`` (see :mod:`svfseg.data.samplers`).

Evaluation protocol (BAM/SVF repos' test: 1000 episodes; queries in file order, so Pascal fold 0 cycles its
364 images ~2.75 times and COCO only ever queries its first 1000 val images). Here the queries are
successive passes over the *whole* val list, each pass a fresh seeded permutation: every image is queried
``floor`` or ``ceil(n_episodes / len)`` times, and on COCO the 1000 queries spread over all images
instead of the first 1000 in file order. Each episode has its own seeded stream, and supports are the head
of a seeded permutation of the pool, so a table is prefix-stable in ``n_episodes`` and 1-shot and 5-shot
tables of one seed share queries, classes and the first support.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from svfseg.data.batch import EpisodeBatch
from svfseg.data.io import read_sample
from svfseg.data.lists.selection import FewShotList
from svfseg.data.samplers import DOMAIN_EVAL_TABLE, DOMAIN_TRAIN_SAMPLE, EpisodeKey, seed_sequence
from svfseg.data.transforms import EvalTransform, TrainTransform, Transformed, pad_square
from svfseg.files import atomic_write
from svfseg.labels import IGNORE_INDEX
from svfseg.metrics.episode_file import TableInfo

Pair = tuple[str, str]
TABLE_FORMAT = 1


class EpisodeDataError(ValueError):
    """The data cannot make the episodes or batches a run asks for (too few images of a class for the
    shot, fewer training queries than the batch); train.py and eval.py report it without a traceback."""


# ------------------------------------------------------------------------------------------ labels


def binary_mask(label: np.ndarray, class_id: int) -> np.ndarray:
    """Episode mask: ``class_id`` -> 1, 255 stays 255, every other class (base or novel) -> 0."""
    out = np.zeros_like(label, dtype=np.uint8)
    out[label == class_id] = 1
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    return out


def base_label_lut(base: Sequence[int]) -> np.ndarray:
    """Lookup table for BAM's base label: base class c -> ``base.index(c) + 1``, others 0, 255 kept."""
    lut = np.zeros(256, dtype=np.uint8)
    for i, c in enumerate(base):
        lut[int(c)] = i + 1
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


# ------------------------------------------------------------------------------------------ pools


class EpisodePools:
    """Per-image candidate classes and per-class support pools of a list, checked once for ``shot``.

    ``classes`` is the fold's class list (base in training, novel in evaluation); ``class_idx`` of an
    episode is the class's position in it.
    """

    def __init__(self, lst: FewShotList, classes: Sequence[int], shot: int, *, what: str) -> None:
        if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
            raise ValueError(f"shot={shot!r} must be an integer >= 1")
        self.classes = tuple(int(c) for c in classes)
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(
                f"{what}: the class list {list(self.classes)} must be non-empty and without repeats"
            )
        self.pairs = lst.pairs
        self.shot = shot
        self.pools = {c: tuple(lst.by_class.get(c, ())) for c in self.classes}
        self.position = {c: {p: i for i, p in enumerate(pool)} for c, pool in self.pools.items()}
        small = {c: len(pool) for c, pool in self.pools.items() if 0 < len(pool) <= shot}
        if small:
            raise EpisodeDataError(
                f"{what}: class pools {small} (class: images) are too small for {shot}-shot episodes, which need "
                f"{shot} supports besides the query ({shot + 1} images). Lower shot or min_pixels, or use a "
                "larger dataset."
            )
        cands: dict[Pair, list[int]] = {p: [] for p in self.pairs}
        for c in self.classes:
            for p in self.pools[c]:
                cands[p].append(c)
        orphans = [p for p, cs in cands.items() if not cs]
        if orphans:
            raise ValueError(
                f"{what}: {len(orphans)} of {len(self.pairs)} list images are in no pool of classes "
                f"{list(self.classes)}, e.g. {orphans[0]}; the list was built for other classes "
                "(train lists use the fold's base classes, val lists its novel classes)"
            )
        self.candidates = {p: tuple(cs) for p, cs in cands.items()}

    def draw(self, rng: np.random.Generator, query: Pair) -> tuple[int, tuple[Pair, ...]]:
        """Class (uniform among the query's pool classes) and ``shot`` distinct supports (never the query)."""
        cands = self.candidates[query]
        class_id = cands[int(rng.integers(len(cands)))]
        pool = self.pools[class_id]
        skip = self.position[class_id][query]
        order = rng.permutation(len(pool) - 1)[: self.shot]
        supports = tuple(pool[int(j) + (j >= skip)] for j in order)
        return class_id, supports


# ------------------------------------------------------------------------------------------ samples


class _EpisodeReader:
    """Reads and transforms the images of one episode (shared by training and evaluation datasets)."""

    def __init__(self, root: str | Path, num_classes: int, hint: str | None) -> None:
        self.root = Path(root)
        self.num_classes = int(num_classes)
        self.hint = hint

    def read(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        return read_sample(self.root, pair, self.num_classes, hint=self.hint)


def _episode(
    query: Transformed, supports: Sequence[Transformed], class_idx: int, class_id: int, index: int
) -> EpisodeBatch:
    """The keys every episode carries, training or evaluation (:class:`~svfseg.data.batch.EpisodeBatch`)."""
    return {
        "query_img": query.image,
        "query_mask": query.mask,
        "support_img": torch.stack([s.image for s in supports]),
        "support_mask": torch.stack([s.mask for s in supports]),
        "class_idx": class_idx,
        "class_id": class_id,
        "episode_idx": index,
    }


class TrainEpisodes(Dataset):
    """Training episodes; ``dataset[(epoch, index)]`` is a pure function of ``(seed, epoch, index)``.

    The query is ``lst.pairs[index]``. A plain int key means epoch 0. With ``with_base_label`` the sample
    also carries ``query_base_label`` (BAM), built from ``classes`` (the fold's base classes).
    """

    def __init__(
        self,
        root: str | Path,
        lst: FewShotList,
        classes: Sequence[int],
        shot: int,
        transform: TrainTransform,
        seed: int,
        *,
        num_classes: int,
        with_base_label: bool = False,
        hint: str | None = None,
    ) -> None:
        self.pools = EpisodePools(lst, classes, shot, what="training episodes")
        self.reader = _EpisodeReader(root, num_classes, hint)
        self.transform = transform
        self.seed = int(seed)
        self.shot = shot
        self.with_base_label = with_base_label
        self.lut = base_label_lut(classes) if with_base_label else None
        self.class_index = {c: i for i, c in enumerate(self.pools.classes)}

    def __len__(self) -> int:
        return len(self.pools.pairs)

    def episode(
        self, key: EpisodeKey | int
    ) -> tuple[int, int, np.random.SeedSequence, tuple[Pair, ...], int]:
        """(epoch, index, per-image seeds, supports, class) of a key, without reading any image."""
        epoch, index = (0, key) if isinstance(key, (int, np.integer)) else key
        if not 0 <= int(index) < len(self):
            raise IndexError(f"episode index {index} out of range for {len(self)} training queries")
        ss = seed_sequence(self.seed, DOMAIN_TRAIN_SAMPLE, int(epoch), int(index))
        draw_ss, aug_ss = ss.spawn(2)
        class_id, supports = self.pools.draw(np.random.default_rng(draw_ss), self.pools.pairs[int(index)])
        return int(epoch), int(index), aug_ss, supports, class_id

    def __getitem__(self, key: EpisodeKey | int) -> EpisodeBatch:
        _, index, aug_ss, supports, class_id = self.episode(key)
        query = self.pools.pairs[index]
        seeds = aug_ss.spawn(1 + self.shot)
        image, label = self.reader.read(query)
        extra = self.lut[label] if self.lut is not None else None
        q = self.transform(image, binary_mask(label, class_id), seeds[0], extra=extra)
        shots = []
        for pair, s_seed in zip(supports, seeds[1:]):
            s_image, s_label = self.reader.read(pair)
            shots.append(self.transform(s_image, binary_mask(s_label, class_id), s_seed))
        sample = _episode(q, shots, self.class_index[class_id], class_id, index)
        if q.extra is not None:
            sample["query_base_label"] = q.extra
        return sample


# ------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class EpisodeTable:
    """A fixed list of evaluation episodes: query, class and supports per episode.

    ``classes`` is the class list ``class_idx`` refers to. ``digest()`` hashes the content (classes, shot
    and episodes; not the seed, which is provenance) so runs can prove they evaluated the same episodes.
    """

    classes: tuple[int, ...]
    shot: int
    seed: int
    queries: tuple[Pair, ...]
    class_ids: tuple[int, ...]
    supports: tuple[tuple[Pair, ...], ...]

    def __post_init__(self) -> None:
        n = len(self.queries)
        if len(self.class_ids) != n or len(self.supports) != n:
            raise ValueError(
                f"episode table columns differ in length: {n} queries, {len(self.class_ids)} classes, "
                f"{len(self.supports)} support sets"
            )
        unknown = sorted(set(self.class_ids) - set(self.classes))
        if unknown:
            raise ValueError(
                f"episode table uses classes {unknown} outside its class list {list(self.classes)}"
            )
        for i, (q, s) in enumerate(zip(self.queries, self.supports)):
            if len(s) != self.shot or len(set(s)) != self.shot or q in s:
                raise ValueError(
                    f"episode {i} needs {self.shot} distinct supports other than its query {q}, got {list(s)}"
                )

    def __len__(self) -> int:
        return len(self.queries)

    def _content(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "shot": self.shot,
            "episodes": [
                [list(q), c, [list(p) for p in s]]
                for q, c, s in zip(self.queries, self.class_ids, self.supports)
            ],
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON of the content: stable across runs, machines and worker counts."""
        text = json.dumps(self._content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "seed": self.seed, "digest": self.digest(), **self._content()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], origin: str = "<json>") -> EpisodeTable:
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(
                f"{origin}: episode table format {data.get('format')!r}, expected {TABLE_FORMAT}"
            )
        try:
            episodes = data["episodes"]
            table = cls(
                classes=tuple(int(c) for c in data["classes"]),
                shot=int(data["shot"]),
                seed=int(data["seed"]),
                queries=tuple((str(q[0]), str(q[1])) for q, _, _ in episodes),
                class_ids=tuple(int(c) for _, c, _ in episodes),
                supports=tuple(tuple((str(p[0]), str(p[1])) for p in s) for _, _, s in episodes),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"{origin}: not a valid episode table ({exc})") from exc
        if data.get("digest") != table.digest():
            raise ValueError(
                f"{origin}: recorded digest {data.get('digest')} does not match the content "
                f"({table.digest()}); the file was edited or damaged, rebuild it"
            )
        return table

    def save(self, path: str | Path) -> Path:
        """Write atomically; a per-process temporary name lets every DDP rank save the same table safely."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(p, lambda tmp: tmp.write_text(json.dumps(self.to_json())))

    @classmethod
    def load(cls, path: str | Path) -> EpisodeTable:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"episode table {p} does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not JSON ({exc}); rebuild the episode table") from exc
        return cls.from_json(data, str(p))


def build_eval_episodes(
    lst: FewShotList, classes: Sequence[int], shot: int, n_episodes: int, seed: int
) -> EpisodeTable:
    """The fixed evaluation table: queries are successive seeded permutations of the whole list (module doc)."""
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes!r} must be a positive integer (BAM/SVF repos: 1000)")
    pools = EpisodePools(lst, classes, shot, what="evaluation episodes")
    n = len(pools.pairs)
    if n == 0:
        raise EpisodeDataError("evaluation episodes: the list has no images")
    queries: list[Pair] = []
    for p in range(math.ceil(n_episodes / n)):
        perm = np.random.default_rng(seed_sequence(seed, DOMAIN_EVAL_TABLE, 0, p)).permutation(n)
        queries.extend(pools.pairs[int(j)] for j in perm)
    del queries[n_episodes:]
    class_ids, supports = [], []
    for i, q in enumerate(queries):
        c, s = pools.draw(np.random.default_rng(seed_sequence(seed, DOMAIN_EVAL_TABLE, 1, i)), q)
        class_ids.append(c)
        supports.append(s)
    return EpisodeTable(pools.classes, shot, int(seed), tuple(queries), tuple(class_ids), tuple(supports))


def table_info(table: EpisodeTable) -> TableInfo:
    """What ``episodes.json`` keeps of a table: its digest and each episode's query image path."""
    return TableInfo(table.digest(), [query[0] for query in table.queries])


class EvalEpisodes(Dataset):
    """Evaluation episodes from a fixed table; draws no random numbers.

    Besides the training keys, each sample carries ``label_ori``: the original-resolution binary query
    label padded with 255 to ``L x L`` (``L = max(H, W)``), and ``ori_hw`` = (H, W) (:mod:`svfseg.data.batch`).
    """

    def __init__(
        self,
        root: str | Path,
        table: EpisodeTable,
        transform: EvalTransform,
        *,
        num_classes: int,
        hint: str | None = None,
    ) -> None:
        self.table = table
        self.reader = _EpisodeReader(root, num_classes, hint)
        self.transform = transform
        self.class_index = {c: i for i, c in enumerate(table.classes)}

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> EpisodeBatch:
        if not 0 <= index < len(self.table):
            raise IndexError(f"episode {index} out of range for a table of {len(self.table)} episodes")
        class_id = self.table.class_ids[index]
        image, label = self.reader.read(self.table.queries[index])
        q_label = binary_mask(label, class_id)
        q = self.transform(image, q_label)
        shots = []
        for pair in self.table.supports[index]:
            s_image, s_label = self.reader.read(pair)
            shots.append(self.transform(s_image, binary_mask(s_label, class_id)))
        sample = _episode(q, shots, self.class_index[class_id], class_id, index)
        sample["label_ori"] = torch.from_numpy(pad_square(q_label)).long()
        sample["ori_hw"] = (
            int(label.shape[0]),
            int(label.shape[1]),
        )  # host ints: no device sync to read them
        return sample
