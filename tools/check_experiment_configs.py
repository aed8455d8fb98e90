"""Compose every ``conf/experiment/**`` row with train.py's config and snapshot or compare the results.

A refactor of the experiment files (shared presets, rows that include other rows) must leave every
``python train.py experiment=<table>/<row>`` run exactly as it was. This tool composes each row through
:func:`svfseg.compose.compose_train_config` (what ``train.py`` composes, less the progress bar), in
both command forms the docs use (``experiment=table1/x`` and the sweep form ``+experiment/table1=x``),
and records per command:

* ``config``: the resolved config, with ``paths`` replaced by ``<paths.KEY>`` placeholders before
  resolving (as :func:`svfseg.run_dir.hashed_config` does), so the record depends neither on the machine
  nor on Hydra's runtime;
* ``paths``: the ``paths`` node unresolved (its interpolations as written, e.g. ``${oc.env:SVFSEG_ROOT,.}``);
* ``run_hash``: :func:`svfseg.run_dir.config_hash`, the 8 characters in the run folder's name;
* ``choices``: Hydra's group choices (``backbone: resnet50`` ...), kept in ``.hydra/hydra.yaml``;
* ``error``: instead of all the above, the message of a row that does not compose.

``conf/local/`` (per-machine settings, ignored by git) is left out, so records from two machines or two
revisions compare. Usage::

    python tools/check_experiment_configs.py --snapshot /tmp/before.json   # record the working tree
    python tools/check_experiment_configs.py --compare /tmp/before.json    # compose again and compare
    python tools/check_experiment_configs.py --against HEAD~1              # compare with a git revision

``--against REV`` composes REV's ``conf`` in a temporary ``git worktree`` (with REV's ``src`` first on
``PYTHONPATH``) and compares it with the working tree. The exit status is 1 when a config, run hash or
composition error differs or a command composes only before; a changed group choice alone (same
resolved config) and new rows are reported, not failures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FORMAT = 1
# Differences in these fields fail a comparison; ``choices`` are reported only.
COMPARED = ("error", "config", "paths", "run_hash")


def experiment_names(conf_dir: Path) -> list[str]:
    """``table1/resnet50_bam_svf``-style names of every ``conf/experiment/**/*.yaml``, sorted."""
    root = conf_dir / "experiment"
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def commands(name: str) -> list[str]:
    """The override forms of one row: ``experiment=a/b`` and, for a row in a folder, ``+experiment/a=b``."""
    forms = [f"experiment={name}"]
    if "/" in name:
        group, _, row = name.rpartition("/")
        forms.append(f"+experiment/{group}={row}")
    return forms


def _choices(conf_dir: Path, overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    return {
        k: v for k, v in sorted(choices.items()) if not k.startswith("hydra/") and k not in ("hydra", "local")
    }


def _composer() -> tuple[Path, Any]:
    """The conf folder and ``compose_train_config`` of the imported svfseg; a revision (``--against``) from
    before they moved from ``svfseg.tasks.compose`` to ``svfseg.compose`` has them at the old place."""
    try:
        from svfseg.compose import CONF_DIR, compose_train_config
    except ImportError:
        from svfseg.tasks.compose import CONF_DIR, compose_train_config
    return CONF_DIR, compose_train_config


def record(command: str) -> dict[str, Any]:
    """What ``command`` (one override) composes to: see the module docstring."""
    from omegaconf import OmegaConf

    from svfseg.run_dir import config_hash

    conf_dir, compose_train_config = _composer()
    overrides = [command, *(["~local"] if (conf_dir / "local").is_dir() else [])]
    try:
        cfg = compose_train_config(overrides)
        tree = OmegaConf.to_container(cfg, resolve=False)
        assert isinstance(tree, dict)
        paths = tree.get("paths") or {}
        tree["paths"] = {key: f"<paths.{key}>" for key in paths}
        resolved = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
        return {
            "config": resolved,
            "paths": paths,
            "run_hash": config_hash(cfg),
            "choices": _choices(conf_dir, overrides),
        }
    except Exception as err:  # a row that does not compose is recorded, not fatal
        return {"error": f"{type(err).__name__}: {err}"}


def snapshot(names: Iterable[str] | None = None) -> dict[str, Any]:
    """Every experiment command (or those of ``names``) of the checkout whose ``svfseg`` is imported."""
    conf_dir, _ = _composer()
    chosen = experiment_names(conf_dir) if names is None else names
    records = {cmd: record(cmd) for name in chosen for cmd in commands(name)}
    return {"format": FORMAT, "conf_dir": str(conf_dir), "commands": records}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where ``old`` and ``new`` differ, with both values."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{dotted}: only after ({json.dumps(new[key])})")
            elif key not in new:
                out.append(f"{dotted}: only before ({json.dumps(old[key])})")
            else:
                out.extend(_diff(old[key], new[key], dotted))
        return out
    if old != new or type(old) is not type(new):
        return [f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


@dataclass
class Comparison:
    """The outcome of comparing two snapshots' ``commands``."""

    identical: list[str] = field(default_factory=list)
    differing: dict[str, list[str]] = field(default_factory=dict)  # command -> differences that fail
    choices_only: dict[str, list[str]] = field(default_factory=dict)  # same config, other group choices
    removed: list[str] = field(default_factory=list)  # composes before only: a command users had is gone
    added: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differing and not self.removed

    def lines(self) -> Iterable[str]:
        for cmd, diffs in self.differing.items():
            yield f"DIFFERENT {cmd}"
            yield from (f"    {d}" for d in diffs)
        for cmd in self.removed:
            yield f"REMOVED   {cmd}"
        for cmd, diffs in self.choices_only.items():
            yield f"CHOICES   {cmd} (same resolved config)"
            yield from (f"    {d}" for d in diffs)
        for cmd in self.added:
            yield f"NEW       {cmd}"
        same = len(self.identical) + len(self.choices_only)
        total = same + len(self.differing) + len(self.removed)
        yield (
            f"{same} of {total} commands compose to the same config "
            f"({len(self.choices_only)} with other group choices); {len(self.differing)} differ, "
            f"{len(self.removed)} removed, {len(self.added)} new."
        )


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> Comparison:
    """Compare two snapshots (:func:`snapshot`'s dicts, or just their ``commands``)."""
    old = before.get("commands", before)
    new = after.get("commands", after)
    result = Comparison()
    for cmd in sorted(set(old) | set(new)):
        if cmd not in new:
            result.removed.append(cmd)
        elif cmd not in old:
            result.added.append(cmd)
        else:
            diffs = [d for key in COMPARED for d in _diff(old[cmd].get(key), new[cmd].get(key), key)]
            choice_diffs = _diff(old[cmd].get("choices"), new[cmd].get("choices"), "choices")
            if diffs:
                result.differing[cmd] = diffs + choice_diffs
            elif choice_diffs:
                result.choices_only[cmd] = choice_diffs
            else:
                result.identical.append(cmd)
    return result


def snapshot_of_revision(rev: str) -> dict[str, Any]:
    """:func:`snapshot` of git revision ``rev``, composed in a temporary worktree by a child process."""
    with tempfile.TemporaryDirectory(prefix="svfseg-configs-") as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "snapshot.json"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True
        )
        try:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(tree / "src"), os.environ.get("PYTHONPATH", "")]),
            }
            subprocess.run([sys.executable, __file__, "--snapshot", str(out)], check=True, env=env, cwd=tree)
            data = json.loads(out.read_text())
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    if Path(data["conf_dir"]) != tree / "conf":
        raise RuntimeError(
            f"the child composed {data['conf_dir']}, not the worktree's conf: is svfseg installed non-editable?"
        )
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--snapshot", type=Path, metavar="FILE", help="write the working tree's records to FILE"
    )
    mode.add_argument("--compare", type=Path, metavar="FILE", help="compare the working tree with FILE")
    mode.add_argument("--against", metavar="REV", help="compare the working tree with git revision REV")
    parser.add_argument(
        "--list", action="store_true", help="also print every command compared and its run hash"
    )
    args = parser.parse_args(argv)

    current = snapshot()
    errors = {cmd: r["error"] for cmd, r in current["commands"].items() if "error" in r}
    for cmd, message in errors.items():
        print(f"DOES NOT COMPOSE {cmd}: {message}")
    if args.snapshot:
        args.snapshot.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"{len(current['commands'])} commands ({len(errors)} not composing) -> {args.snapshot}")
        return 0
    before = json.loads(args.compare.read_text()) if args.compare else snapshot_of_revision(args.against)
    if before.get("format") != FORMAT:
        print(f"{args.compare}: snapshot format {before.get('format')}, this tool writes {FORMAT}")
        return 2
    result = compare(before, current)
    if args.list:
        for cmd, rec in sorted(current["commands"].items()):
            print(f"  {rec.get('run_hash', 'error')}  {cmd}")
    for line in result.lines():
        print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
