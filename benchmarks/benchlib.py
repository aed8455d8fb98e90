"""Shared helpers of the benchmark scripts: glibc heap retention, peak-RSS measurement, Markdown sections.

Peak memory: a step's peak is ``VmHWM - VmRSS(before)`` after resetting the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``). Run it in a fresh process with glibc's mmap threshold fixed at
64 KiB (``WORKER_ENV``) so that every tensor buffer is its own mapping and RSS tracks live tensor bytes.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONUNBUFFERED": "1"}


def retain_freed_memory() -> None:
    """glibc: serve steady-state steps from already-mapped heap pages instead of re-faulting fresh ones."""
    if platform.libc_ver()[0] != "glibc":
        raise RuntimeError("--allocator retain needs glibc (mallopt); use --allocator default elsewhere")
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    for option, value in (
        (m_mmap_threshold, 32 * 2**20),
        (m_trim_threshold, 2**31 - 1),
        (m_top_pad, 256 * 2**20),
    ):
        if libc.mallopt(option, value) != 1:
            raise RuntimeError(f"mallopt({option}, {value}) failed")


def proc_status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024  # MiB
    return out


def measure_peak(fn: Callable[[], None], after: Callable[[], None]) -> float:
    gc.collect()
    before = proc_status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    peak = proc_status()["VmHWM"]
    after()
    return peak - before


def saved_for_backward(fn: Callable[[], None], model: nn.Module) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during ``fn`` (an RSS-free cross-check)."""
    params = {t.untyped_storage().data_ptr() for t in model.state_dict().values() if isinstance(t, Tensor)}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def write_section(path: Path, section: str, text: str) -> None:
    """Replace (or append) the ``section`` heading's part of ``path``, leaving other sections untouched."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(section) + r".*?(?=^## |\Z)", re.S | re.M)
    new = (
        pattern.sub(lambda _: text + "\n", old)
        if pattern.search(old)
        else old.rstrip("\n") + "\n\n" + text + "\n"
    )
    path.write_text(new.rstrip("\n") + "\n")


def interleaved_times(
    units: dict[str, Callable[[], None]], rounds: int, warmup: int, *, digits: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each unit over ``rounds`` rounds (after ``warmup``), in a fresh seeded order
    each round, so that machine noise hits every unit alike; prints each round."""
    times: dict[str, list[float]] = {k: [] for k in units}
    rng = random.Random(0)
    for r in range(warmup + rounds):
        order = list(units)
        rng.shuffle(order)
        for key in order:
            t0 = time.perf_counter()
            units[key]()
            if r >= warmup:
                times[key].append(time.perf_counter() - t0)
        done = ", ".join(f"{k} {times[k][-1]:.{digits}f}s" for k in order if times[k])
        print(f"  round {r + 1}/{warmup + rounds}: {done}", flush=True)
    return times
