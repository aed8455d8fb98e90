"""tools/check_experiment_configs.py: its comparison logic, and the experiment files' one home per fact.

The tool proves a refactor of ``conf/experiment`` keeps every row's composed config (issue 23); here its
comparison is run on small cases, and one real row is recorded in both command forms.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

from tests.helpers.hydra import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "check_experiment_configs", ROOT / "tools/check_experiment_configs.py"
)
assert _spec and _spec.loader
checker = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = checker  # dataclasses look their module up
_spec.loader.exec_module(checker)


def _rec(lr: float = 0.015, backbone: str = "resnet50", run_hash: str = "aaaa0000") -> dict:
    return {
        "config": {"optim": {"lr": lr}, "backbone": {"dilation": "torchvision"}},
        "paths": {"root_dir": "${oc.env:SVFSEG_ROOT,.}"},
        "run_hash": run_hash,
        "choices": {"backbone": backbone},
    }


def test_compare_sorts_commands_into_identical_differing_choice_only_removed_and_new() -> None:
    before = {"format": 1, "commands": {"a": _rec(), "b": _rec(), "c": _rec(), "gone": _rec()}}
    after = {
        "format": 1,
        "commands": {"a": _rec(), "b": _rec(lr=0.02), "c": _rec(backbone="resnet50_x"), "new": _rec()},
    }
    result = checker.compare(before, after)
    assert result.identical == ["a"]
    assert result.differing == {"b": ["config.optim.lr: 0.015 -> 0.02"]}
    assert result.choices_only == {"c": ['choices.backbone: "resnet50" -> "resnet50_x"']}
    assert (result.removed, result.added) == (["gone"], ["new"])
    assert not result.ok
    lines = list(result.lines())
    assert (
        lines[-1]
        == "2 of 4 commands compose to the same config (1 with other group choices); 1 differ, 1 removed, 1 new."
    )


def test_compare_passes_choice_changes_and_new_rows_but_not_a_key_or_type_change() -> None:
    assert checker.compare({"a": _rec()}, {"a": _rec(backbone="x"), "b": _rec()}).ok
    dropped = _rec()
    del dropped["config"]["backbone"]
    result = checker.compare({"a": _rec()}, {"a": dropped})
    assert result.differing == {"a": ['config.backbone: only before ({"dilation": "torchvision"})']}
    assert not checker.compare({"a": _rec(lr=1)}, {"a": _rec(lr=1.0)}).ok  # int vs float is a change
    assert not checker.compare({"a": _rec()}, {"a": _rec(run_hash="bbbb1111")}).ok
    assert not checker.compare({"a": _rec()}, {"a": {"error": "ConfigCompositionException: x"}}).ok


def test_a_row_is_recorded_in_both_command_forms_without_machine_paths(tmp_path: Path) -> None:
    assert checker.commands("table2/vgg16_bam_svf") == [
        "experiment=table2/vgg16_bam_svf",
        "+experiment/table2=vgg16_bam_svf",
    ]
    snap = checker.snapshot(["table2/vgg16_bam_svf"])
    plain, sweep = (snap["commands"][c] for c in checker.commands("table2/vgg16_bam_svf"))
    assert "error" not in plain and "error" not in sweep
    assert plain["config"] == sweep["config"] and plain["run_hash"] == sweep["run_hash"]
    assert plain["config"]["backbone"]["pretrained"] == "<paths.weights_dir>/vgg16_bn.pth"
    assert plain["config"]["table"] == "table2" and plain["config"]["dataset"]["name"] == "coco"
    assert plain["paths"]["root_dir"] == "${oc.env:SVFSEG_ROOT,.}"
    assert (
        plain["choices"]["experiment"] == "table2/vgg16_bam_svf" and "hydra/launcher" not in plain["choices"]
    )
    # Written and read back, a snapshot compares identical to itself.
    (tmp_path / "s.json").write_text(json.dumps(snap))
    result = checker.compare(json.loads((tmp_path / "s.json").read_text()), snap)
    assert result.ok and len(result.identical) == 2


def test_a_row_that_does_not_compose_is_recorded_not_raised() -> None:
    rec = checker.record("experiment=table1/no_such_row")
    assert set(rec) == {"error"} and "no_such_row" in rec["error"]


def test_every_experiment_file_is_listed() -> None:
    names = checker.experiment_names(CONF_DIR)
    assert "table1/resnet50_bam_svf" in names and "table2/vgg16_pfenet_freeze" in names
    assert names == sorted(names) and len(names) == len(list((CONF_DIR / "experiment").rglob("*.yaml")))


# ------------------------------------------------------------------------- one home per fact (issue 23)
def _rows() -> dict[str, dict]:
    root = CONF_DIR / "experiment"
    return {
        p.relative_to(root).with_suffix("").as_posix(): yaml.safe_load(p.read_text())
        for p in root.rglob("*.yaml")
    }


def test_no_experiment_row_repeats_the_dilation_layout() -> None:
    """``backbone.dilation: torchvision`` lives in conf/backbone/dilation/torchvision.yaml; rows include it."""
    key = re.compile(r"^\s*dilation:\s*torchvision\b", re.MULTILINE)  # the key, not the defaults entry
    homes = sorted(
        p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml") if key.search(p.read_text())
    )
    assert homes == ["backbone/dilation/torchvision.yaml"]
    for name, row in _rows().items():
        assert "dilation" not in (row.get("backbone") or {}), name
        entries = {k: v for d in row.get("defaults", []) if isinstance(d, dict) for k, v in d.items()}
        svf_code = entries.get("override /method") in ("baseline", "pfenet") and str(
            entries.get("override /backbone")
        ).startswith("resnet")
        # The SVF code's baseline/PFENet ResNet rows include it (Table 2's through Table 1's rows).
        assert (entries.get("/backbone/dilation") == "torchvision") == svf_code, name


def test_table2_rows_are_table1_rows_with_only_the_dataset_and_table_label_changed() -> None:
    rows = _rows()
    table1 = {n.split("/")[1] for n in rows if n.startswith("table1/")}
    table2 = {n.split("/")[1] for n in rows if n.startswith("table2/")}
    assert table1 == table2 and len(table1) == 12
    for stem in sorted(table2):
        row = rows[f"table2/{stem}"]
        assert row == {
            "defaults": [f"/experiment/table1/{stem}", {"override /dataset": "coco"}],
            "table": "table2",
        }, stem
        assert rows[f"table1/{stem}"]["table"] == "table1"


def test_vgg16_is_an_alias_of_vgg16_bn() -> None:
    alias = yaml.safe_load((CONF_DIR / "backbone/vgg16.yaml").read_text())
    assert alias == {"defaults": ["vgg16_bn"]}
    assert yaml.safe_load((CONF_DIR / "backbone/vgg16_bn.yaml").read_text())["name"] == "vgg16_bn"
    for name, row in _rows().items():
        assert {"override /backbone": "vgg16"} not in row.get("defaults", []), name  # rows spell it vgg16_bn
    composed = [compose_config("train", [f"backbone={b}"]).backbone for b in ("vgg16", "vgg16_bn")]
    assert composed[0] == composed[1]
