"""The benchmark scripts keep working (not timed): a small class-index run writes its own Markdown section."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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


def test_gpu_check_runs_in_its_cpu_smoke_mode_and_writes_its_table(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh's Python part end to end on CPU at tiny size (the GPU run needs a GPU)."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--out", str(tmp_path), "--device", "cpu",
           "--settings", "65:1,65:2", "--eval-settings", "65:1", "--repeats", "1", "--warmup", "0",
           "--eval-episodes", "2", "--width", "0.125", "--reduce-dim", "32"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert sorted(record["steps"]) == ["65 px 1-shot", "65 px 2-shot"]
    keys = {f"{v}/{p}" for v in ("freeze", "full", "svf", "svf_ckpt") for p in ("fp32", "bf16")}
    assert all(set(rows) == keys for rows in record["steps"].values())
    assert all(
        r["median_s"] > 0 and r["peak_mib"] is None
        for rows in record["steps"].values()
        for r in rows.values()
    )
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.count("| 65 px 1-shot | bf16 |") == 4 and "| 65 px 1-shot | 1.0 |" not in text
    assert "| 65 px 1-shot |" in text.split("episodes/s")[1]


def test_svf_benchmark_lite0_part_times_every_peft_row_through_the_strategies(tmp_path: Path) -> None:
    """bench_svf.py's Lite0 part at 65 px, one round: its section has a row per PEFT strategy with the
    trainable counts of `python -m svfseg.finetune.budget` (docs/peft-comparison.md) and a peak step
    memory per training row (a worker process each), and keeps the rest."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other section\n\nkept as it is\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_svf.py"), "--backbones", "efficientnet_lite0",
           "--size", "65", "--repeats", "1", "--warmup", "0", "--write", str(doc)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert "## Other section\n\nkept as it is\n" in text
    assert text.count("### EfficientNet-Lite0: SVF with depthwise convs") == 1
    cells = {
        line.split(" | ")[0]: line.split(" | ")[1:] for line in text.splitlines() if "training step:" in line
    }
    rows = {name: row[0] for name, row in cells.items()}
    assert rows == {
        "| training step: freeze (`finetune=freeze`: no_grad forward)": "0",
        "| training step: full fine-tune": "2,958,848",
        "| training step: SVF (auto), s trains in layer2-4": "11,880",
        "| training step: LoRA r=8 (peft), layer2-4": "164,544",
        "| training step: LoRA rank=match_svf (peft), layer2-4 (= rank 1)": "20,568",
        "| training step: DoRA r=8 (peft), layer2-4": "174,976",
        "| training step: DoRA rank=match_svf (peft), layer2-4 (= rank 1)": "31,000",
        "| training step: SVF top-k (k=0.25), layer2-4": "9,486",
        "| training step: SVF bottom-k (k=0.25), layer2-4": "9,486",
        "| training step: SALT (k=0.25, r=4), layer2-4": "38,124",
        "| training step: BitFit (BN affine + biases), layer2-4": "38,240",
    }
    # peak step memory (MiB), x full FT, saved for backward (MiB): measured for every training row
    memory = {name: [float(c.strip(" |").replace(",", "")) for c in row[3:6]] for name, row in cells.items()}
    assert memory["| training step: full fine-tune"][1] == 1.0
    # freeze's no_grad forward keeps nothing and may round to 0 MiB at 65 px
    assert all(peak > 0 for name, (peak, _, _) in memory.items() if "freeze" not in name)
    # the forked worker reads a known 256 MiB allocation back as a fresh interpreter did (256-257 MiB)
    (calibration,) = re.findall(r"Memory calibration: a 256 MiB tensor reads back as ([0-9.]+) MiB", text)
    assert abs(float(calibration) - 256) < 3


def test_a_failing_memory_worker_names_its_request_and_shows_its_traceback() -> None:
    """The memory server answers a worker that raised with an error naming the request; its traceback reaches
    the benchmark's stderr."""
    script = REPO / "benchmarks" / "bench_pipeline.py"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); from benchlib import measure_in_forks\n"
        "try:\n    measure_in_forks(Path(sys.argv[2]), ['nosuch@5'], ['--size', '65'])\n"
        "except RuntimeError as err:\n    print('raised:', err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "benchmarks"), str(script)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "raised: memory worker failed: the worker for 'nosuch@5' exited with 1" in proc.stdout
    assert "KeyError: 'nosuch'" in proc.stderr


def test_svf_benchmark_lite0_rows_use_the_options_of_the_peft_experiments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every conf/experiment/peft row has a Lite0 variant whose strategy and options are the composed ones."""
    from svfseg.compose import compose_train_config

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("bench_svf")
    rows = {p.stem for p in (REPO / "conf" / "experiment" / "peft").glob("*.yaml")}
    assert set(bench.LITE_EXPERIMENT.values()) == rows
    assert set(bench.LITE_EXPERIMENT) <= set(bench.LITE_TRAIN)
    for variant, row in bench.LITE_EXPERIMENT.items():
        finetune = compose_train_config([f"experiment=peft/{row}"]).finetune
        name, options = bench.LITE_STRATEGY.get(variant, (variant, {}))
        assert finetune.name == name, variant
        assert {k: finetune[k] for k in options} == options, variant
        if variant in ("full", "svf"):  # built directly: the plain rows, no SVF variant options
            assert finetune.get("directions", "all") == "all", variant
