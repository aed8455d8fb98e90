"""Shared helpers of the benchmark scripts: glibc heap retention, peak-RSS measurement, Markdown sections.

Peak memory: a step's peak is ``VmHWM - VmRSS(before)`` after resetting the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``). Run it in a process of its own with glibc's mmap threshold fixed at
64 KiB (``WORKER_ENV``) so that every tensor buffer is its own mapping and RSS tracks live tensor bytes.
:func:`measure_in_forks` gives each variant such a process: a child forked from one memory server (started
with ``WORKER_ENV``, torch and the benchmark imported once), instead of a fresh interpreter per variant,
which spent about 6 s of 2-core CPU on imports before each measured step.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONUNBUFFERED": "1"}
SERVER_FLAG = "--memory-server"  # a benchmark script started with it runs serve_forked
# prefixes the server's answer lines (anything else the measured code prints is passed on)
RESULT_MARK = "svfseg-memory-result "


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


def check_worker_env() -> None:
    """Refuse to measure without ``WORKER_ENV``'s heap settings (RSS would not track live tensors)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != WORKER_ENV["MALLOC_MMAP_THRESHOLD_"]:
        raise RuntimeError(
            "the memory server needs MALLOC_MMAP_THRESHOLD_=65536 in its environment (RSS must track live "
            f"tensors); run the benchmark without {SERVER_FLAG}: it starts its memory server itself"
        )


def serve_forked(measure: Callable[[str], dict[str, float]]) -> None:
    """The memory server's loop: one request per stdin line, each measured by ``measure`` in a forked child.

    The child starts from the server's state (torch imported, nothing measured yet) with a heap of its own:
    under ``WORKER_ENV`` every tensor buffer is its own mapping, and the peak counter is reset before each
    step, so a child's peak counts its own step as a fresh interpreter's would. One answer line per request.
    """
    check_worker_env()
    while request := sys.stdin.readline().strip():
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: measure, answer, and leave without running the server's exit handlers
            code = 0
            try:
                print(RESULT_MARK + json.dumps(measure(request)), flush=True)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code != 0:  # an exception (its traceback went to stderr) or a signal (negative: its number)
            print(
                RESULT_MARK + json.dumps({"error": f"the worker for {request!r} exited with {code}"}),
                flush=True,
            )


def measure_in_forks(script: Path, requests: Iterable[str], args: list[str]) -> dict[str, dict[str, float]]:
    """Start ``script SERVER_FLAG ARGS`` with ``WORKER_ENV`` and measure each request in a child of it.

    Requests go one at a time (one child alive at once, as the measurement needs); the server's stderr is
    this process's, so a worker's traceback shows where the benchmark runs.
    """
    cmd = [sys.executable, str(script), SERVER_FLAG, *args]
    results: dict[str, dict[str, float]] = {}
    with subprocess.Popen(
        cmd, env={**os.environ, **WORKER_ENV}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdin is not None and server.stdout is not None
        for request in requests:
            server.stdin.write(request + "\n")
            server.stdin.flush()
            while not (line := server.stdout.readline()).startswith(RESULT_MARK):
                if not line:
                    raise RuntimeError(f"the memory server ({' '.join(cmd)}) stopped at {request!r}")
                print(line, end="", flush=True)
            answer = json.loads(line.removeprefix(RESULT_MARK))
            if "error" in answer:
                raise RuntimeError(f"memory worker failed: {answer['error']} (its traceback is above)")
            results[request] = answer
        server.stdin.close()
        if server.wait() != 0:
            raise RuntimeError(f"the memory server ({' '.join(cmd)}) exited with {server.returncode}")
    return results
