"""The suite's files, longest first, so that both xdist workers finish together.

``make test`` hands whole files to the worker that asks next (``--dist loadfile``). pytest-xdist orders the
files by test count unless told otherwise, which put the longest file (a single five-minute real-photo test)
last, alone on one worker while the other sat idle. ``tests/durations.json`` holds each file's measured
seconds; the conftest orders by it (``--no-loadscope-reorder`` keeps that order) and a file it does not know
counts as the median. ``make test-durations`` measures them again:
``python -m tests.helpers.durations JUNIT_XML`` turns a run's JUnit report into the file.
"""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
DURATIONS_FILE = TESTS / "durations.json"


def load_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    """``{"tests/x/test_y.py": seconds}``; empty where the file is missing (then the order is unchanged)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def longest_files_first(items: Sequence[pytest.Item], durations: dict[str, float]) -> list[pytest.Item]:
    """``items`` regrouped by file, the longest file first; the order inside a file is kept."""
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    unknown = statistics.median(durations.values()) if durations else 0.0
    order = sorted(by_file, key=lambda f: -durations.get(f, unknown))  # stable: ties keep collection order
    return [item for f in order for item in by_file[f]]


def _test_file(classname: str, root: Path) -> str:
    """``tests.tasks.test_x.TestGroup`` -> ``tests/tasks/test_x.py`` (the longest prefix that is a file)."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = Path(*parts[:end]).with_suffix(".py")
        if (root / path).is_file():
            return path.as_posix()
    raise ValueError(f"no test file for JUnit classname {classname!r}")


def durations_from_junit(report: Path, root: Path = TESTS.parent) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown of its tests), from pytest's ``--junitxml`` report of
    a run in ``root``."""
    totals: dict[str, float] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = _test_file(case.get("classname", ""), root)
        totals[name] = totals.get(name, 0.0) + float(case.get("time", 0.0))
    return {name: round(totals[name], 1) for name in sorted(totals, key=lambda n: -totals[n])}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_file():
        print("usage: python -m tests.helpers.durations JUNIT_XML (from pytest --junitxml)", file=sys.stderr)
        return 2
    durations = durations_from_junit(Path(args[0]))
    DURATIONS_FILE.write_text(json.dumps(durations, indent=1) + "\n")
    print(f"wrote {DURATIONS_FILE.relative_to(TESTS.parent)}: {len(durations)} files, "
          f"{sum(durations.values()):.0f} s of tests")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
