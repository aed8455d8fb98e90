"""``make test`` runs the longest test files first, from durations measured by pytest's own JUnit report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tests.helpers.durations import DURATIONS_FILE, durations_from_junit, load_durations, longest_files_first

REPO = Path(__file__).resolve().parents[2]


def _items(*nodeids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def test_files_are_regrouped_longest_first_keeping_their_own_order() -> None:
    items = _items("a.py::t1", "b.py::t1", "a.py::t2", "c.py::t1", "b.py::t2", "d.py::t1")
    durations = {"a.py": 5.0, "b.py": 50.0, "c.py": 1.0}  # d.py unknown: the median, 5.0 (ties keep order)
    ordered = [i.nodeid for i in longest_files_first(items, durations)]
    assert ordered == ["b.py::t1", "b.py::t2", "a.py::t1", "a.py::t2", "d.py::t1", "c.py::t1"]
    assert [i.nodeid for i in longest_files_first(items, {})] == [
        "a.py::t1", "a.py::t2", "b.py::t1", "b.py::t2", "c.py::t1", "d.py::t1"
    ]  # fmt: skip


def test_durations_are_summed_per_file_from_pytests_junit_report(tmp_path: Path) -> None:
    """The report pytest itself writes (a function, a class and a parametrized test in one file)."""
    folder = tmp_path / "tests" / "sub"
    folder.mkdir(parents=True)
    (folder / "test_timed.py").write_text(
        "import time, pytest\n"
        "def test_a():\n    time.sleep(0.3)\n"
        "class TestGroup:\n    def test_b(self):\n        time.sleep(0.2)\n"
        "@pytest.mark.parametrize('n', [1, 2])\ndef test_c(n):\n    pass\n"
    )
    report = tmp_path / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         f"--rootdir={tmp_path}", "-c", "/dev/null", f"--junitxml={report}", "tests/sub/test_timed.py"],
        cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    durations = durations_from_junit(report, root=tmp_path)
    assert list(durations) == ["tests/sub/test_timed.py"]
    assert 0.5 <= durations["tests/sub/test_timed.py"] < 5.0


def test_the_committed_durations_name_existing_test_files() -> None:
    durations = load_durations()
    assert durations == json.loads(DURATIONS_FILE.read_text())
    assert len(durations) >= 80
    assert all((REPO / name).is_file() and name.startswith("tests/") for name in durations)
    assert list(durations.values()) == sorted(durations.values(), reverse=True)
