"""The benchmark scripts keep working (not timed): a small class-index run writes its own Markdown section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_benchmark_index_part_writes_only_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other section\n\nkept as it is\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_pipeline.py"), "--only", "index",
           "--index-labels", "300", "--write", str(doc)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert "## Other section\n\nkept as it is\n" in text
    assert text.count("## Pipeline (CPU): class index build time") == 1
    assert "for 300 synthetic COCO-layout labels of 64 px" in text
    assert f"--only index --index-labels 300 --write {doc}" in text
    # a second run replaces the section instead of appending another
    subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert doc.read_text().count("## Pipeline (CPU): class index build time") == 1
