"""Compose the project's Hydra configs in tests, with a tiny CPU profile and tmp output paths."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<name>.yaml`` like the CLI would (without the Hydra runtime section)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    return cfg


def tiny_train_config(
    data_root: Path, out_dir: Path, *, min_pixels: int, extra: list[str] | None = None
) -> DictConfig:
    """A train.py config on the synthetic dataset that runs in seconds on CPU."""
    cfg = compose_config(
        "train",
        [
            "dataset=synthetic",
            "debug=tiny",
            "logger=csv",
            f"dataset.root={data_root}",
            f"dataset.min_pixels={min_pixels}",
            f"paths.output_dir={out_dir}",
            f"paths.log_dir={out_dir}",
            *(extra or []),
        ],
    )
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
    return cfg
