"""DDP on CPU with 2 processes (gloo), through the real command lines.

* ``eval.py`` on 1 process and with ``trainer.devices=2 trainer.strategy=ddp`` gives identical ``miou``,
  ``fbiou`` and ``class_iou`` for an episode count that does not divide by the world size or the batch
  size (25 episodes, batches of 4): no episode is duplicated or dropped by the sampler;
* a short SVF training run with 2 processes finishes, and its singular values are bitwise identical on
  both ranks after the last step (DDP all-reduces the gradients of ``s``), and moved from the SVD's.

Lightning's DDP on CPU re-launches the script once per rank (its Hydra-aware subprocess launcher), so
these run ``train.py`` / ``eval.py`` as subprocesses in a temporary working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from svfseg.svf import svf_layers
from tests.helpers.cli import REPO, run_cli, tiny_overrides

N_EPISODES = 25  # odd: 13 + 12 episodes on two ranks, and not a multiple of the eval batch (4)
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


class DumpSingularValues(pl.Callback):
    """At the end of training every rank saves its SVF layers' ``s`` and ``s0`` to ``<dirpath>/rank<r>.pt``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {}
        for name, layer in svf_layers(pl_module.model.backbone):
            state[f"{name}.s"] = layer.effective_s().detach().clone()
            state[f"{name}.s0"] = layer.s0.detach().clone()
        torch.save(state, self.dirpath / f"rank{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def svf_checkpoint(synthetic_pascal, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ddp_ckpt")
    run_cli(
        [
            str(REPO / "train.py"),
            *tiny_overrides(synthetic_pascal),
            "finetune=svf",
            "test_after_fit=false",
            f"hydra.run.dir={work / 'run'}",
        ],
        work,
        timeout=300,
    )
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def _eval(ckpt: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    run_cli(
        [
            str(REPO / "eval.py"),
            f"ckpt_path={ckpt}",
            f"n_episodes={N_EPISODES}",
            "eval_batch_size=4",
            "num_workers=0",
            "+trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
            *extra,
        ],
        out.parent,
        timeout=300,
    )
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_eval_on_two_ddp_processes_equals_one_process(svf_checkpoint: Path, tmp_path: Path) -> None:
    one = _eval(svf_checkpoint, tmp_path / "one", ["trainer.accelerator=cpu", "trainer.devices=1"])
    two = _eval(svf_checkpoint, tmp_path / "two", DDP)
    assert one["n_episodes"] == two["n_episodes"] == N_EPISODES
    for seed, record in one["per_seed"].items():
        assert record["n_episodes"] == two["per_seed"][seed]["n_episodes"] == N_EPISODES
    # integer pixel counts summed over ranks: equal to the bit, not merely close
    assert two["miou"] == one["miou"]
    assert two["fbiou"] == one["fbiou"]
    assert two["class_iou"] == one["class_iou"]
    assert 0.0 <= one["miou"] <= 1.0
    # every episode's counts, gathered from both ranks in episode order: the same file
    assert (tmp_path / "two" / "episodes.json").read_text() == (
        tmp_path / "one" / "episodes.json"
    ).read_text()
    # only rank 0 writes: one metrics.json (and its episodes.json) per run directory
    assert sorted(p.name for p in (tmp_path / "two").glob("*.json")) == ["episodes.json", "metrics.json"]


@pytest.mark.slow
def test_two_process_svf_training_keeps_the_singular_values_identical_across_ranks(
    synthetic_pascal, tmp_path: Path
) -> None:
    dump = tmp_path / "sv"
    run = tmp_path / "run"
    proc = run_cli(
        [
            str(REPO / "train.py"),
            *tiny_overrides(synthetic_pascal),
            *DDP,
            "finetune=svf",
            "dataset.batch_size=4",  # the total over both processes: 2 per rank
            "test_after_fit=false",
            f"hydra.run.dir={run}",
            "+callbacks.dump._target_=tests.tasks.test_ddp.DumpSingularValues",
            f"+callbacks.dump.dirpath={dump}",
        ],
        tmp_path,
        timeout=300,
    )
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 0
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    moved = [k for k in ranks[0] if k.endswith(".s") and not torch.equal(ranks[0][k], ranks[0][k + "0"])]
    assert moved, "no singular value moved: the run did not train"
    # the trained stages only: layer0-1 are not converted under the default finetune=svf
    assert all(k.split(".", 1)[0] in ("layer2", "layer3", "layer4") for k in ranks[0])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4  # debug=tiny: limit_train_batches=4, one epoch
    # The metrics (summed over ranks by torchmetrics) and sv_change (equal weights) are equal on every rank
    # when logged: Lightning's advice to log them with sync_dist=True (43 lines per run before) is silenced,
    # for these names only.
    output = proc.stdout + proc.stderr
    assert "val/miou" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    for prefix in ("val", "train_episodes", "sv_change"):
        assert f"It is recommended to use `self.log('{prefix}/" not in output, prefix


@pytest.mark.slow
def test_eval_under_torchrun_leaves_one_run_folder(svf_checkpoint: Path, tmp_path: Path) -> None:
    """Under torchrun every rank composes its own run folder; eval.py's default one has a timestamp, so
    ranks that start in different seconds name different folders (simulated here with the rank in the
    name). Rank 0 writes the results; another rank's folder, empty, is removed instead of left behind."""
    folders = tmp_path / "eval"
    proc = run_cli(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "eval.py"),
            f"ckpt_path={svf_checkpoint}",
            f"n_episodes={N_EPISODES}",
            "eval_batch_size=4",
            "num_workers=0",
            "+trainer.enable_progress_bar=false",
            *DDP,
            f"hydra.run.dir={folders}/rank${{oc.env:RANK}}",
        ],
        tmp_path,
        timeout=300,
    )
    assert sorted(p.name for p in folders.iterdir()) == ["rank0"], proc.stderr[-2000:]
    assert (folders / "rank0" / "metrics.json").is_file()
    one = _eval(svf_checkpoint, tmp_path / "one", ["trainer.accelerator=cpu", "trainer.devices=1"])
    two = json.loads((folders / "rank0" / "metrics.json").read_text())
    assert (two["miou"], two["fbiou"], two["class_iou"]) == (one["miou"], one["fbiou"], one["class_iou"])
