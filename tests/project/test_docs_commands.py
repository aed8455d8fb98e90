"""Every shell command in README.md and docs/ works as written, as far as it can be checked without running it.

The fenced ``bash`` / ``sh`` / ``shell`` / ``console`` blocks of README.md and docs/**/*.md are read like
the shell reads them: backslash-continued lines are joined, comments dropped, ``&&`` / ``||`` / ``;`` /
``|`` chains split, ``for NAME in ...`` loops and ``NAME=value`` assignments of the block give their
variables (each loop value is tried), and ``$NAME`` / ``${NAME}`` outside single quotes is expanded like the
shell would: a variable the block never sets is an error (the shell makes it an empty string). Then every
command that starts with ``python``, ``make`` or ``torchrun`` (after ``VAR=value`` prefixes, ``time`` and
loop keywords) is checked:

* it tokenises (``shlex``: an unclosed quote fails), with no unquoted ``<`` / ``>`` (a ``<placeholder>``
  would be a shell redirection) and no unquoted parentheses;
* ``train.py`` / ``eval.py`` / ``predict.py`` (also under ``torchrun``): the config composes with the
  overrides through Hydra's compose API, ``hydra.*`` keys and ``hydra/launcher=`` included, so an unknown key
  or group fails. With ``-m`` each choice of every sweep (``a,b``, ``glob(*)``) is composed, the other sweeps
  at their first choice; without ``-m`` a sweep fails as it does on the command line. Only composition is
  checked: a config that would fail a file check later (placeholder paths) passes;
* ``python -m MODULE`` / ``python path/to/script.py``: the module or script exists, and an argparse CLI
  parses the arguments (its ``parse_args`` is intercepted, so nothing runs);
* ``make TARGET``: the Makefile has the target (and ``make -n TARGET`` accepts it where make is installed).

All problems are reported together, each with its file and line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
# Variables a reader's shell has set; any other must be set by the block itself.
ENVIRONMENT = {"HOME": "/home/user", "PWD": "/work", "USER": "user"}
# Words before the command itself.
PREFIX_WORDS = {"do", "then", "else", "time", "!", "{"}
HYDRA_FLAGS = {"-m", "--multirun", "--resolve", "-h", "--help", "--hydra-help"}
HYDRA_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cn", "--config-name"}
TORCHRUN_VALUE_OPTIONS = {
    "--nproc_per_node",
    "--nproc-per-node",
    "--nnodes",
    "--node_rank",
    "--node-rank",
    "--master_addr",
    "--master-addr",
    "--master_port",
    "--master-port",
    "--rdzv_backend",
    "--rdzv-backend",
    "--rdzv_endpoint",
    "--rdzv-endpoint",
    "--rdzv_id",
    "--rdzv-id",
    "--max_restarts",
    "--max-restarts",
}
OPERATORS = {"&&", "||", ";", "|", "&", ";;"}
REDIRECTIONS = {"<", ">", ">>", "<<", "<<<", ">&", "<&", "&>", ">|", "<>"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass
class Block:
    path: Path
    lang: str
    lines: list[tuple[int, str]]  # (1-based line number, text)


@dataclass
class Command:
    """One checked command: where it is written, its text as written and its words after expansion."""

    where: str
    text: str
    words: list[str]
    problems: list[str] = field(default_factory=list)


def shell_blocks(path: Path, text: str | None = None) -> list[Block]:
    lines = (path.read_text() if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in SHELL_LANGS:
            blocks.append(Block(path, lang, [(k + 1, lines[k]) for k in range(i + 1, j)]))
        i = j + 1
    return blocks


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """Backslash-continued lines joined; in console blocks only ``$ ``-prompted lines (output dropped)."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in block.lines:
        line = raw
        if pending is None and block.lang == "console":
            stripped = line.lstrip()
            if not stripped.startswith("$ "):
                continue
            line = stripped[2:]
        if pending is not None:
            line = pending[1] + " " + line.strip()
            number = pending[0]
        if line.rstrip().endswith("\\") and not line.rstrip().endswith("\\\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        if line.strip():
            out.append((number, line.strip()))
    if pending is not None:
        out.append(pending)
    return out


def expand(
    text: str, env: dict[str, str], substitution: str = "SUBSTITUTED"
) -> tuple[str, list[str], list[str]]:
    """Expand ``$NAME`` / ``${NAME}`` outside single quotes like the shell; ``$(...)`` becomes ``substitution``.

    Returns the expanded text, the names used and the names that ``env`` does not set.
    """
    out: list[str] = []
    used: list[str] = []
    unset: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            out.append(c)
            if c == "'":
                quote = ""
            i += 1
            continue
        if c == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if not quote and c == "#" and (i == 0 or text[i - 1].isspace()):
            out.append(text[i:])  # a comment
            break
        if c in "'\"":
            if not quote:
                quote = c
            elif quote == c:
                quote = ""
            out.append(c)
            i += 1
            continue
        if c == "$":
            if text.startswith("$(", i):
                depth, j = 0, i + 1
                while j < len(text):
                    depth += {"(": 1, ")": -1}.get(text[j], 0)
                    if depth == 0:
                        break
                    j += 1
                out.append(substitution)
                i = j + 1
                continue
            m = re.match(r"\$\{(\w+)\}|\$(\w+)", text[i:])
            if m:
                name = m.group(1) or m.group(2)
                used.append(name)
                if name in env:
                    out.append(env[name])
                else:
                    unset.append(name)
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out), used, unset


def tokens(text: str) -> list[str]:
    """The shell's words and operators (``&&``, ``;``, ``|``, ``<``, ``(`` ...); an unclosed quote raises."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def segments(words: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for w in words:
        if w in OPERATORS:
            out.append([])
        else:
            out[-1].append(w)
    return [s for s in out if s]


def command_words(segment: list[str]) -> list[str]:
    """Drop loop keywords, ``time`` and ``VAR=value`` prefixes."""
    i = 0
    while i < len(segment) and (segment[i] in PREFIX_WORDS or ASSIGNMENT.match(segment[i])):
        i += 1
    return segment[i:]


def is_checked(words: list[str]) -> bool:
    return bool(words) and (Path(words[0]).name in {"python", "python3", "make", "torchrun"})


class _Verbatim(dict):
    """An environment that leaves every ``$NAME`` as it is."""

    def __contains__(self, name: object) -> bool:
        return True

    def __getitem__(self, name: str) -> str:
        return f"${{{name}}}"


def block_variables(block: Block) -> dict[str, list[str]]:
    """``for NAME in WORDS`` loops (all values) and ``NAME=value`` assignments (their value) of a block."""
    found: dict[str, list[str]] = {}
    for _, raw in logical_lines(block):
        # $(...) as one word, so that NAME=$(...) reads as an assignment
        line = expand(raw, _Verbatim(), substitution="$SUBSTITUTED")[0] if "$(" in raw else raw
        try:
            words = tokens(line)
        except ValueError:
            continue
        for seg in segments(words):
            while seg and seg[0] in PREFIX_WORDS:
                seg = seg[1:]
            if len(seg) >= 3 and seg[0] == "for" and seg[2] == "in":
                found[seg[1]] = seg[3:] or [""]
            elif seg and all(ASSIGNMENT.match(w) for w in seg):
                for w in seg:
                    name, value = w.split("=", 1)
                    found[name] = [value if "$" not in value else name.upper()]
    return found


def environments(used: list[str], variables: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every value of every used variable once, the others at their first value."""
    base = {**ENVIRONMENT, **{k: v[0] for k, v in variables.items()}}
    envs = [base]
    for name in dict.fromkeys(used):
        for value in variables.get(name, [])[1:]:
            envs.append({**base, name: value})
    return envs


def doc_commands(path: Path, text: str | None = None) -> list[Command]:
    """The checked commands of a Markdown file (one per variable setting), with their shell-level problems."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    commands: list[Command] = []
    for block in shell_blocks(path, text):
        variables = block_variables(block)
        for number, line in logical_lines(block):
            where = f"{rel}:{number}"
            _, used, _ = expand(line, {**ENVIRONMENT, **{k: v[0] for k, v in variables.items()}})
            seen: set[tuple[str, ...]] = set()
            for env in environments(used, variables):
                expanded, _, unset = expand(line, env)
                try:
                    words = tokens(expanded)
                except ValueError as err:
                    if any(is_checked(command_words(s)) for s in segments(line.split())):
                        commands.append(Command(where, line, [], [f"does not tokenise: {err}"]))
                    break
                for seg in segments(words):
                    cmd = command_words(seg)
                    if not is_checked(cmd) or tuple(cmd) in seen:
                        continue
                    seen.add(tuple(cmd))
                    problems = [
                        f"the shell expands ${name} to an empty string (the block never sets it; "
                        "single-quote the word to pass it on literally)"
                        for name in dict.fromkeys(unset)
                    ]
                    shell_ops = sorted({w for w in cmd if w in REDIRECTIONS or w in {"(", ")"}})
                    if shell_ops:
                        problems.append(
                            f"unquoted {' '.join(shell_ops)}: the shell reads it as a redirection or "
                            "subshell (a <placeholder>? use PLACEHOLDER or quote it)"
                        )
                    commands.append(Command(where, line, cmd, problems))
    return commands


# --- checking one command ------------------------------------------------------------------------------


class _Parsed(Exception):
    """Raised instead of running a CLI once argparse accepted its arguments."""


def parse_cli(run: Callable[[], object], argv: list[str], path_entries: tuple[str, ...] = ()) -> str | None:
    """Run a CLI entry point until argparse has parsed ``argv``; its error message, or None.

    ``path_entries`` go first on ``sys.path``, as the script's folder does for ``python script.py``.
    """
    real_parse_args = argparse.ArgumentParser.parse_args
    real_parse_known = argparse.ArgumentParser.parse_known_args
    state = {"depth": 0, "in_parse_args": False}

    def parse_args(self, args=None, namespace=None):
        state["in_parse_args"] = True
        try:
            real_parse_args(self, args, namespace)
        finally:
            state["in_parse_args"] = False
        raise _Parsed

    def parse_known_args(self, args=None, namespace=None):
        state["depth"] += 1
        try:
            result = real_parse_known(self, args, namespace)
        finally:
            state["depth"] -= 1
        if state["depth"] == 0 and not state["in_parse_args"]:
            raise _Parsed
        return result

    err = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_known_args),
        mock.patch.object(sys, "argv", argv),
        mock.patch.object(sys, "path", [*path_entries, *sys.path]),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules ..."
        try:
            run()
        except _Parsed:
            return None
        except SystemExit as exc:
            if exc.code in (0, None):  # --help
                return None
            lines = err.getvalue().strip().splitlines()
            return f"its argument parser rejects the arguments: {lines[-1] if lines else exc.code}"
        except Exception as exc:
            return f"it fails before parsing its arguments: {type(exc).__name__}: {_first_line(exc)}"
    return "it ran without parsing its arguments with argparse"


@dataclass
class Checker:
    """Checks commands; Hydra is initialised once for all compositions."""

    makefile_targets: set[str]
    make_ok: dict[str, str | None] = field(default_factory=dict)
    composed: dict[tuple[str, tuple[str, ...]], str | None] = field(default_factory=dict)

    def check(self, cmd: Command) -> list[str]:
        if cmd.problems or not cmd.words:
            return cmd.problems
        head = Path(cmd.words[0]).name
        if head == "make":
            return self.check_make(cmd.words[1:])
        if head == "torchrun":
            return self.check_python(self.torchrun_to_python(cmd.words[1:]))
        return self.check_python(cmd.words[1:])

    @staticmethod
    def torchrun_to_python(args: list[str]) -> list[str]:
        i = 0
        while i < len(args) and args[i].startswith("-"):
            if args[i] in {"-m", "--module"}:
                return ["-m", *args[i + 1 :]]
            i += 2 if args[i] in TORCHRUN_VALUE_OPTIONS else 1
        return args[i:]

    def check_make(self, args: list[str]) -> list[str]:
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        problems = []
        for target in targets:
            if target not in self.makefile_targets:
                problems.append(f"the Makefile has no target {target!r}")
                continue
            if target not in self.make_ok and shutil.which("make"):
                proc = subprocess.run(
                    ["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60
                )
                self.make_ok[target] = None if proc.returncode == 0 else proc.stderr.strip()
            if self.make_ok.get(target):
                problems.append(f"make -n {target} fails: {self.make_ok[target]}")
        return problems or ([] if targets else ["make without a target"])

    def check_python(self, args: list[str]) -> list[str]:
        if not args:
            return ["no script or module"]
        if args[0] == "-m":
            if len(args) < 2:
                return ["-m without a module"]
            return self.check_module(args[1], args[2:])
        if args[0].startswith("-"):
            return [f"unsupported interpreter option {args[0]!r}"]
        script = ROOT / args[0]
        if not script.is_file():
            return [f"no script {args[0]} in the repository"]
        config = re.search(r"@hydra\.main\([^)]*config_name=\"(\w+)\"", script.read_text())
        if config:
            return self.check_hydra(config.group(1), args[1:])
        if "argparse" in script.read_text():
            problem = parse_cli(
                lambda: runpy.run_path(str(script), run_name="__main__"),
                [str(script), *args[1:]],
                path_entries=(str(script.parent),),
            )
            return [problem] if problem else []
        return []

    def check_module(self, module: str, args: list[str]) -> list[str]:
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            return [f"no module {module}"]
        if spec.submodule_search_locations is not None:  # a package: python -m runs its __main__
            main_spec = importlib.util.find_spec(f"{module}.__main__")
            if main_spec is None:
                return [f"the package {module} has no __main__ module"]
            spec = main_spec
        if not module.startswith("svfseg") or spec.origin is None:
            return []
        if "argparse" not in Path(spec.origin).read_text():
            return []
        problem = parse_cli(
            lambda: runpy.run_module(module, run_name="__main__", alter_sys=False), [module, *args]
        )
        return [problem] if problem else []

    def check_hydra(self, config: str, args: list[str]) -> list[str]:
        multirun, overrides, i = False, [], 0
        while i < len(args):
            a = args[i]
            if a in {"-m", "--multirun"}:
                multirun = True
            elif a in HYDRA_VALUE_FLAGS:
                i += 1
            elif a in HYDRA_FLAGS:
                pass
            elif a.startswith("-") and not a.startswith("~"):
                return [f"unknown Hydra flag {a!r}"]
            else:
                overrides.append(a)
            i += 1
        try:
            choices = self.sweep_choices(overrides) if multirun else [overrides]
        except Exception as err:
            return [f"Hydra cannot parse the overrides: {_first_line(err)}"]
        problems = []
        for chosen in choices:
            key = (config, tuple(chosen))
            if key not in self.composed:
                try:
                    compose(config_name=config, overrides=chosen, return_hydra_config=True)
                    self.composed[key] = None
                except Exception as err:
                    self.composed[key] = _first_line(err)
            if self.composed[key] is not None:
                problems.append(f"{config}.yaml does not compose with {chosen}: {self.composed[key]}")
        return problems

    @staticmethod
    def sweep_choices(overrides: list[str]) -> list[list[str]]:
        """Each choice of every config-group sweep once (the other sweeps at their first choice).

        A sweep over plain values (``fold=0,1,2,3``) composes alike for every value: its first is enough.
        """
        loader = GlobalHydra.instance().config_loader()
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
        options: list[list[str]] = []
        for o in parsed:
            if o.is_sweep_override():
                values = list(o.sweep_string_iterator())
                if not values:
                    raise ValueError(f"the sweep {o.input_line!r} selects nothing")
                group = o.key_or_group.lstrip("+~")
                if not loader.get_group_options(group):
                    values = values[:1]
                options.append([f"{o.get_key_element()}={v}" for v in values])
            else:
                options.append([o.input_line])
        first = [opts[0] for opts in options]
        out = [first]
        for k, opts in enumerate(options):
            for alt in opts[1:]:
                out.append([*first[:k], alt, *first[k + 1 :]])
        return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


@contextlib.contextmanager
def hydra_context() -> Iterator[None]:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()


def check_all(commands: list[Command]) -> list[str]:
    checker = Checker(makefile_targets())
    failures = []
    with hydra_context():
        for cmd in commands:
            for problem in checker.check(cmd):
                failures.append(f"{cmd.where}: {cmd.text}\n    -> {problem}")
    return list(dict.fromkeys(failures))  # a loop's values often repeat one problem


# --- tests ---------------------------------------------------------------------------------------------


def test_every_documented_command_parses_and_composes() -> None:
    commands = [c for path in doc_files() for c in doc_commands(path)]
    # The extraction itself: the docs' commands of every kind are found.
    heads = {Path(c.words[0]).name if c.words else "" for c in commands}
    assert {"python", "make", "torchrun"} <= heads, heads
    hydra = [c for c in commands if any(w in {"train.py", "eval.py", "predict.py"} for w in c.words[:4])]
    modules = {c.words[2] for c in commands if c.words[1:2] == ["-m"]}
    assert len(hydra) >= 40 and {"svfseg.tables", "svfseg.weights", "svfseg.dataprep.prepare"} <= modules
    failures = check_all(commands)
    assert not failures, f"{len(failures)} documented command(s) do not work as written:\n" + "\n".join(
        failures
    )


def _check_snippet(tmp_path: Path, body: str) -> list[str]:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# t\n\n```bash\n{body}\n```\n")
    return check_all(doc_commands(doc))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # the shell expands ${n_episodes} inside double quotes: every label would be "baseline ( episodes)"
        (
            "python eval.py -m ckpt_path=x n_episodes=1000,4000 table=t \"row='b (${n_episodes} episodes)'\"",
            "expands $n_episodes to an empty string",
        ),
        ("python eval.py ckpt_path=runs/<job>/best.ckpt", "unquoted < >"),
        ("python train.py fold=0 no_such_key=1", "Could not override 'no_such_key'"),
        ("python train.py -m '+experiment/table4=glob(*)' finetune=svf,nope", "finetune"),
        ("python train.py fold=0,1", "Ambiguous value"),
        ("python train.py -m hydra/launcher=slurm_4gpu hydra.launcher.partitio=gpu", "partitio"),
        ("torchrun --nproc_per_node=2 train.py trainer=nope", "trainer"),
        ("python -m svfseg.tables outputs --layout t --no-such-flag", "unrecognized arguments"),
        ("python -m svfseg.nope", "no module svfseg.nope"),
        ("python -m svfseg.weights fetch", "rejects the arguments"),
        ("make no-such-target", "no target 'no-such-target'"),
        ("python benchmarks/bench_load.py --no-such-flag", "unrecognized arguments"),
        ("python benchmarks/no_such_bench.py", "no script benchmarks/no_such_bench.py"),
        ("python train.py 'fold=0", "does not tokenise"),
        ("cd x && python train.py +experiment/table4=glob(*)", "unquoted ( )"),
    ],
)
def test_the_checker_catches_broken_commands(tmp_path: Path, body: str, expected: str) -> None:
    failures = _check_snippet(tmp_path, body)
    assert len(failures) >= 1 and expected in failures[0], failures


def test_the_checker_accepts_working_commands(tmp_path: Path) -> None:
    body = "\n".join(
        [
            "for k in 0 1; do",
            "  SVFSEG_SWEEP_ID=t python eval.py -m ckpt_path=runs/fold$k/best.ckpt \\",
            "      n_episodes=1000,4000 table=table11 'row=\"baseline (${n_episodes} episodes)\"'",
            "done",
            "python train.py -m '+experiment/table4=glob(*)' fold=0,1,2,3 hydra/launcher=slurm_4gpu \\",
            "    hydra.launcher.partition=gpu ~tags",
            "time make demo   # a comment with $UNSET and <angles>",
            "python benchmarks/bench_load.py --write docs/benchmarks.md && make bench-load",
            "python -m svfseg.tables outputs/eval --layout table11 --baseline 'baseline (1000 episodes)'",
        ]
    )
    assert _check_snippet(tmp_path, body) == []
    commands = doc_commands(tmp_path / "doc.md")
    evals = [c for c in commands if "eval.py" in c.words]
    assert [c.words[3] for c in evals] == ["ckpt_path=runs/fold0/best.ckpt", "ckpt_path=runs/fold1/best.ckpt"]


def test_the_readme_feature_list_names_every_table_and_figure_preset() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("* **Paper tables:**")
    bullet = text[start : text.index("\n* ", start)]
    listed = re.search(r"for Tables ([\d, -]+(?:and [\d-]+)?)", bullet)
    assert listed, bullet
    tables: set[int] = set()
    for part in re.split(r",\s*|\s+and\s+", listed.group(1).strip()):
        lo, _, hi = part.partition("-")
        tables |= set(range(int(lo), int(hi or lo) + 1))
    presets = {p.name for p in (CONF_DIR / "experiment").iterdir() if p.is_dir()}
    assert {int(p[5:]) for p in presets if p.startswith("table")} == tables
    for figure in sorted(p for p in presets if p.startswith("figure")):
        assert f"Figure {figure[6:]}" in bullet and figure in bullet, figure
