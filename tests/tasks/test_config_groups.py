"""Config groups are named like the config node they set; ``recipe=`` stays the former name of ``optim=``."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.helpers.hydra import CONF_DIR, compose_config

# Groups that set one node of the composed config, each of its own name (presets such as debug and
# experiment set several nodes and are _global_ on purpose).
NODE_GROUPS = (
    "method",
    "backbone",
    "dataset",
    "finetune",
    "optim",
    "trainer",
    "logger",
    "callbacks",
    "paths",
)
OPTIM_CHOICES = sorted(p.stem for p in (CONF_DIR / "optim").glob("*.yaml"))


def _composed(overrides: list[str]) -> dict:
    """The composed config as written (interpolations unresolved: ``paths`` needs Hydra's runtime)."""
    return OmegaConf.to_container(compose_config("train", overrides), resolve=False)


@pytest.mark.parametrize("group", NODE_GROUPS)
def test_a_group_sets_the_node_of_its_name(group: str) -> None:
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    assert files, f"conf/{group}/ is empty"
    for path in files:
        header = path.read_text().splitlines()[:3]
        assert not any("@package" in line for line in header), f"{path} moves its keys elsewhere"
    assert group in compose_config("train", [])  # the default choice fills the node


def test_the_optim_group_holds_the_optimiser_and_schedule() -> None:
    assert OPTIM_CHOICES == ["bam_original", "baseline_original", "pfenet_original", "svf"]
    optim = compose_config("train", ["optim=bam_original"]).optim
    assert (optim.lr, optim.schedule, optim.momentum) == (0.05, "poly", 0.9)


def test_every_recipe_alias_names_an_optim_choice() -> None:
    aliases = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
    assert aliases == OPTIM_CHOICES


@pytest.mark.parametrize("choice", OPTIM_CHOICES)
def test_recipe_alias_composes_the_same_config_as_optim(choice: str) -> None:
    assert _composed([f"recipe={choice}"]) == _composed([f"optim={choice}"])


def test_recipe_on_the_command_line_beats_an_experiment_row_as_before() -> None:
    """``experiment=table9/bam_original recipe=svf`` trained with SVF's recipe before the rename; it still does."""
    row = ["experiment=table9/bam_original"]
    assert compose_config("train", row).optim.lr == 0.05
    assert _composed([*row, "recipe=svf"]) == _composed([*row, "optim=svf"])
    assert compose_config("train", [*row, "recipe=svf"]).optim.schedule == "cosine"
