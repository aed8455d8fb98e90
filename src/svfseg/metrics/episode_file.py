"""``episodes.json``: every test episode's counts, written beside ``metrics.json`` by train.py and eval.py.

Per evaluation seed it holds the digest of the episode table (two files are paired only when their
tables are the same episodes) and, in episode order, the episode's index, query image, class index and the
background / foreground intersection and union in pixels. The class sums of these counts are exactly
the ``metrics.json`` numbers; the bootstrap intervals (``miou_ci95``) and ``svfseg-compare`` read them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfseg.files import atomic_write_text
from svfseg.metrics.bootstrap import SeedEpisodes, bootstrap_interval

EPISODES_FILE = "episodes.json"
FORMAT = 1


@dataclass(frozen=True)
class TableInfo:
    """What the file keeps of an episode table: its digest and each episode's query image path."""

    digest: str
    queries: Sequence[str]


def _ints(value: Any) -> list[int]:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return [int(v) for v in np.asarray(value).reshape(-1)]


def episodes_record(
    per_seed: Mapping[int, Mapping[str, Any]], tables: Mapping[int, TableInfo], classes: Sequence[int]
) -> dict[str, Any]:
    """The file's content from each seed's ``FewShotIoU(keep_episodes=True).compute()`` and its table."""
    seeds: dict[str, Any] = {}
    for seed, values in per_seed.items():
        episodes = values["episodes"]
        index = _ints(episodes["index"])
        inter = np.asarray(_ints(episodes["inter"])).reshape(-1, 2)
        union = np.asarray(_ints(episodes["union"])).reshape(-1, 2)
        table = tables[seed]
        seeds[str(seed)] = {
            "table": table.digest,
            "index": index,  # all of the table's, unless a run limited its test batches
            "query": [str(table.queries[i]) for i in index],
            "class_idx": _ints(episodes["class_idx"]),
            "fg_inter": inter[:, 1].tolist(),
            "fg_union": union[:, 1].tolist(),
            "bg_inter": inter[:, 0].tolist(),
            "bg_union": union[:, 0].tolist(),
        }
    return {"format": FORMAT, "classes": [int(c) for c in classes], "seeds": seeds}


def seed_episodes(values: Mapping[str, Any]) -> SeedEpisodes:
    """One seed's record of the file as the bootstrap's input."""
    return SeedEpisodes(
        np.asarray(values["class_idx"], dtype=np.int64),
        np.asarray(values["fg_inter"], dtype=np.int64),
        np.asarray(values["fg_union"], dtype=np.int64),
        tuple(str(q) for q in values["query"]),
    )


def with_intervals(metrics: dict[str, Any], episodes: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` (a metrics.json record) with ``miou_ci95``: the 95 % bootstrap interval over query
    images, for each seed and for the mean over seeds."""
    n_classes = len(episodes["classes"])
    seeds = {s: seed_episodes(v) for s, v in episodes["seeds"].items()}
    for s, one in seeds.items():
        metrics["per_seed"][s]["miou_ci95"] = list(bootstrap_interval([one], n_classes))
    metrics["miou_ci95"] = list(bootstrap_interval(list(seeds.values()), n_classes))
    return metrics


def write_episodes_json(path: str | Path, record: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(record))


@dataclass(frozen=True)
class EpisodeFile:
    """A read ``episodes.json``: the evaluation classes and, per seed, the table digest and the episodes."""

    path: Path
    classes: tuple[int, ...]
    tables: dict[int, str]
    seeds: dict[int, SeedEpisodes]


def read_episodes(path: str | Path) -> EpisodeFile:
    """Read ``path`` (an ``episodes.json`` or the folder holding one); a malformed file is an error naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / EPISODES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: train.py and eval.py write it beside metrics.json (for a run from "
            "before it existed, evaluate its checkpoint again with eval.py)"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        seeds = {int(s): seed_episodes(v) for s, v in data["seeds"].items()}
        tables = {int(s): str(v["table"]) for s, v in data["seeds"].items()}
        classes = tuple(int(c) for c in data["classes"])
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a svfseg episodes.json ({err})") from err
    return EpisodeFile(path, classes, tables, seeds)
