"""``conf/train.yaml`` composed from Python with train.py's overrides: the demos, the budget tool, tests.

Hydra's ``@hydra.main`` composes the config for the three root scripts; tools that run several trainings
in one process (the demos) or only need the config (the budget tool) compose it here, the same way, from
the source checkout's ``conf`` folder. The progress bar is dropped: these callers print their own progress.
It imports nothing of svfseg, so any layer's tool (the budget tool in ``finetune``) can compose a config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``python train.py`` composes it (no progress bar)."""
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"{CONF_DIR} not found: run this from a source checkout (pip install -e .)")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
    return cfg
