"""Which evaluation episodes pick the best checkpoint (``dataset.selection``), and the held-out split.

The SVF, BAM and PFENet code keeps the checkpoint with the best mIoU on the very episodes it reports,
so a reported number is the maximum over epochs of a noisy test score. ``held_out`` splits the fold's
novel-class images in two disjoint halves instead: the best checkpoint is chosen on episodes of one
half and tested on episodes of the other. The split is stratified, so each class has about half of
its images on each side (a plain coin per image left a 6-image class wholly on one side): the images
are taken in the order of the sha256 of their paths (a fixed shuffle, the same on every machine and
for any list order), and each goes to the half that holds fewer images of its classes so far (ties:
the parity of its hash).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from svfseg.data.layouts import Pair
from svfseg.data.lists.selection import FewShotList

#: ``test_episodes``: the best validation mIoU on the first eval seed's test episodes (the paper's
#: protocol, the default). ``held_out``: the best mIoU on episodes of half of the novel-class images,
#: tested on the other half. ``last``: no selection, the last weights are tested.
SELECTIONS = ("test_episodes", "held_out", "last")
DEFAULT_SELECTION = "test_episodes"


def check_selection(value: object, key: str = "dataset.selection") -> str:
    """``value`` as one of :data:`SELECTIONS`, or a ValueError naming ``key`` and the choices."""
    if not isinstance(value, str) or value not in SELECTIONS:
        raise ValueError(
            f"{key}={value!r} is invalid: choose one of {list(SELECTIONS)} (test_episodes: the paper's "
            "protocol; held_out: select on half of the novel-class images, test on the other half; "
            "last: test the last weights)"
        )
    return value


def _digest(pair: Pair) -> bytes:
    return hashlib.sha256(pair[0].encode("utf-8")).digest()


def tested_images(lst: FewShotList, classes: Sequence[int]) -> set[Pair]:
    """The images of ``lst`` in the test half (module doc: hash order, balanced per class, ties by hash parity)."""
    pools = {c: set(lst.by_class.get(c, ())) for c in classes}
    counts = {c: [0, 0] for c in classes}  # [selection, test] images of each class so far
    test: set[Pair] = set()
    for pair in sorted(lst.pairs, key=_digest):
        mine = [c for c in classes if pair in pools[c]]
        selection_load = sum(counts[c][0] for c in mine)
        test_load = sum(counts[c][1] for c in mine)
        half = int(_digest(pair)[0] % 2) if selection_load == test_load else int(test_load < selection_load)
        for c in mine:
            counts[c][half] += 1
        if half:
            test.add(pair)
    return test


def _subset(lst: FewShotList, keep: set[Pair]) -> FewShotList:
    pairs = tuple(p for p in lst.pairs if p in keep)
    return FewShotList(pairs, {c: tuple(p for p in pool if p in keep) for c, pool in lst.by_class.items()})


def split_held_out(
    lst: FewShotList, classes: Sequence[int], shot: int, names: dict[int, str] | None = None
) -> tuple[FewShotList, FewShotList]:
    """``(selection half, test half)`` of an evaluation list; every class that has images keeps enough in each.

    A class with images in the list but fewer than ``shot + 1`` in a half could not be drawn there (its
    IoU would silently count as 0), so the split is refused naming the class and both counts.
    """
    test = tested_images(lst, classes)
    selection_list = _subset(lst, set(lst.pairs) - test)
    test_list = _subset(lst, test)
    short = []
    for c in classes:
        if not lst.by_class.get(c):
            continue
        counts = (len(selection_list.by_class.get(c, ())), len(test_list.by_class.get(c, ())))
        if min(counts) < shot + 1:
            name = f" ({names[c]})" if names and c in names else ""
            short.append(f"class {c}{name}: {counts[0]} selection / {counts[1]} test images")
    if short:
        classes_have = "novel class has" if len(short) == 1 else "novel classes have"
        supports = "support" if shot == 1 else "supports"
        raise ValueError(
            f"dataset.selection=held_out: {len(short)} {classes_have} fewer than {shot + 1} images "
            f"(a query and {shot} {supports}) in a half of the evaluation list: {'; '.join(short)}. "
            "Use dataset.selection=test_episodes (or last), a lower dataset.min_pixels, or more images."
        )
    return selection_list, test_list
