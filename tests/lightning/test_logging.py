"""Logging: W&B offline fallback and grouping, singular-value-change histograms, example predictions,
loggers closed on failure, and no credential in anything a run writes.

W&B runs offline here (no key, or WANDB_MODE=offline); its ``.wandb`` file is read back record by record
(the LevelDB-style log wandb writes) so the tests check what ``wandb sync`` would upload.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import struct
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor, nn

from svfseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from svfseg.lightning import wandb_logging
from svfseg.lightning.media import (
    COLUMNS,
    GT_COLOUR,
    PRED_COLOUR,
    ExamplePredictionLogger,
    header_height,
    mask_panel,
    panel_origin,
    render_prediction_grid,
)
from svfseg.lightning.module import FewShotSegModule
from svfseg.lightning.sv_logging import SingularValueChangeLogger
from svfseg.lightning.wandb_logging import build_wandb_logger, resolve_mode
from svfseg.redaction import REDACTED, redact_secrets, scrub_secrets
from svfseg.svf import apply_svf, svf_layers
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.reporting import close_loggers
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.hydra import tiny_train_config

FAKE_KEY = "fake0key1never2written3anywhere4567890abc"
SVF_STAGES = ("layer2", "layer3", "layer4")  # conf/finetune/svf.yaml


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _no_wandb_run_left() -> Any:
    """A test that fails half-way must not leave a W&B run that later tests would log into."""
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1)


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials, no WANDB_MODE, every wandb directory under tmp (nothing of the user's is read)."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_BASE_URL", "SVFSEG_SWEEP_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return home


def _train(synthetic_pascal, out: Path, extra: list[str]) -> dict[str, Any]:
    root, min_pixels = synthetic_pascal
    common = ["finetune=svf", "test_after_fit=false", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
    cfg = tiny_train_config(root, out, min_pixels=min_pixels, extra=[*common, *extra])
    return train(cfg)


def _parse_wandb_file(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore"
    block, pos, chunks, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if (kind == 0 and length == 0) or pos + length > len(data):  # end, or a record still being written
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            chunks.append(pending + chunk)
    records = []
    for raw in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def read_wandb_records(run_dir: Path, timeout: float = 20.0) -> list[Any]:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file (LevelDB log format, 32 KiB blocks).

    ``wandb.finish`` can return while wandb-core is still writing the file (seen for the first run of a
    process), so this waits until the run's exit record is on disk.
    """
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = _parse_wandb_file(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """History rows as ``{key: value}``; nested keys (histograms, images) joined with '/'."""
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def offline_run(out: Path) -> Path:
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {out / 'wandb'}, found {runs}"
    return runs[0]


def exit_code(records: list[Any]) -> int:
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1, "the W&B run was not finished (no exit record)"
    return int(exits[0].exit_code)


def changes_from_checkpoint(ckpt: Path) -> dict[str, np.ndarray]:
    """s / s0 - 1 per backbone stage, straight from the checkpoint tensors (independent of svfseg.analysis)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    out: dict[str, list[np.ndarray]] = {}
    for key, s0 in state.items():
        if key.startswith("model.backbone.") and key.endswith(".s0"):
            s = state[key[: -len("s0")] + "s"].double().numpy()
            s0 = s0.double().numpy()
            keep = s0 > 0
            out.setdefault(key.split(".")[2], []).append(s[keep] / s0[keep] - 1.0)
    return {stage: np.concatenate(parts) for stage, parts in out.items()}


# ------------------------------------------------------------------------------------------- mode / secrets
def test_auto_mode_goes_offline_without_credentials(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[float] = []
    monkeypatch.setattr(wandb_logging, "wandb_reachable", lambda timeout: probes.append(timeout) or True)
    assert resolve_mode("auto") == "offline"
    assert probes == []  # no network touched without a key

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto", probe_timeout=0.5) == "online"
    assert probes == [0.5]
    monkeypatch.setattr(wandb_logging, "wandb_reachable", lambda timeout: False)
    assert resolve_mode("auto") == "offline"  # key but no network
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("online") == "online"  # explicit choice beats the environment
    assert resolve_mode("auto", offline=True) == "offline"


def test_online_mode_without_credentials_is_refused(wandb_env: Path) -> None:
    with pytest.raises(ValueError, match=r"logger\.wandb\.mode=online but no W&B credentials"):
        resolve_mode("online")
    with pytest.raises(ValueError, match=r"logger\.wandb\.mode='sometimes' is not supported"):
        resolve_mode("sometimes")
    netrc = wandb_env / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert resolve_mode("online") == "online"


def test_unreachable_host_is_detected_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for url in ("http://127.0.0.1:9", "https://nonexistent-host.invalid"):  # refused; no such host
        monkeypatch.setenv("WANDB_BASE_URL", url)
        start = time.perf_counter()
        assert wandb_logging.wandb_reachable(timeout=1.0) is False
        assert time.perf_counter() - start < 2.0


def _refuse_online(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make wandb.init fail like a network that accepts connections but never reaches W&B."""
    import wandb

    real_init, modes = wandb.init, []

    def init(**kwargs: Any) -> Any:
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") == "online":
            raise wandb.errors.CommError("Timed out while retrying: dial tcp: no such host")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    return modes


def test_auto_mode_falls_back_offline_when_the_online_start_fails(
    tmp_path: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(wandb_logging, "wandb_reachable", lambda timeout: True)  # a proxy answers the probe
    modes = _refuse_online(monkeypatch)
    logger = build_wandb_logger({"project": "p", "save_dir": str(tmp_path), "mode": "auto"})
    assert logger._wandb_init["mode"] == "online"
    logger.log_metrics({"val/miou": 0.25}, step=3)
    assert modes == ["online", "offline"]
    assert "could not start an online W&B run (Timed out while retrying" in caplog.text
    close_loggers([logger])
    records = read_wandb_records(offline_run(tmp_path))
    assert exit_code(records) == 0
    assert [r["val/miou"] for r in history_rows(records)] == [0.25]

    # an explicit online choice is not second-guessed
    logger = build_wandb_logger({"project": "p", "save_dir": str(tmp_path / "b"), "mode": "online"})
    with pytest.raises(wandb.errors.CommError, match="Timed out while retrying"):
        logger.log_metrics({"x": 1.0}, step=0)


def test_redaction_and_scrubbing() -> None:
    config = {
        "logger": {"wandb": {"api_key": FAKE_KEY, "project": "p", "tags": ["a"]}},
        "services": [{"auth_token": FAKE_KEY, "num_tokens": 7}, {"db_password": FAKE_KEY}],
        "key": FAKE_KEY,
        "secret_value": None,
        "optim": {"lr": 0.015},
    }
    red = redact_secrets(config)
    assert red["logger"]["wandb"] == {"api_key": REDACTED, "project": "p", "tags": ["a"]}
    assert red["services"] == [{"auth_token": REDACTED, "num_tokens": 7}, {"db_password": REDACTED}]
    assert red["key"] == REDACTED and red["secret_value"] is None and red["optim"] == {"lr": 0.015}
    assert FAKE_KEY not in json.dumps(red)
    assert config["key"] == FAKE_KEY  # a copy: the input is untouched
    assert scrub_secrets({"project": "p", "api_key": FAKE_KEY, "token": "t", "wandb_password": "x"}) == {
        "project": "p"
    }


def test_build_wandb_logger_reads_group_job_type_tags_from_the_config(
    synthetic_pascal, tmp_path: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, min_pixels = synthetic_pascal
    monkeypatch.setenv("SVFSEG_SWEEP_ID", "table4")
    cfg = tiny_train_config(
        root,
        tmp_path,
        min_pixels=min_pixels,
        extra=["logger=wandb", "finetune=svf", "logger.wandb.init_timeout=7"],
    )
    logger = build_wandb_logger(cfg.logger.wandb)
    assert isinstance(logger, WandbLogger)
    init = logger._wandb_init
    assert init["mode"] == "offline"
    assert init["group"] == "table4"
    assert init["job_type"] == "svf"
    assert list(init["tags"]) == ["baseline", "resnet50", "svf", "synthetic", "fold0", "1shot"]
    assert init["name"] == "baseline-resnet50-svf-synthetic-fold0-1shot"
    assert init["settings"].init_timeout == 7
    assert logger._offline is True and "probe_timeout" not in init and "init_timeout" not in init
    monkeypatch.delenv("SVFSEG_SWEEP_ID")
    cfg = tiny_train_config(root, tmp_path, min_pixels=min_pixels, extra=["logger=wandb", "finetune=freeze"])
    assert build_wandb_logger(cfg.logger.wandb)._wandb_init["group"] == "baseline-resnet50-freeze-synthetic"


# ------------------------------------------------------------------------------------------- callbacks (unit)
class _TinySVF(pl.LightningModule):
    """Two 'stages' of SVF convs whose singular values are rescaled by known factors."""

    def __init__(self) -> None:
        super().__init__()
        self.layer2 = nn.Conv2d(4, 8, 3)
        self.layer3 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 6, 3))
        apply_svf(self)
        with torch.no_grad():
            for name, layer in svf_layers(self):
                factor = 1.5 if name.startswith("layer2") else 0.75
                layer.s.mul_(factor)
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.logged[name] = float(value)


class _RecordingTB(TensorBoardLogger):
    """A TensorBoardLogger stand-in (tensorboard is not installed) that records what it is sent."""

    calls: list[tuple[str, str, Any, int]]

    @property
    def experiment(self) -> Any:
        rec = self.calls

        class _Writer:
            def add_histogram(self, tag: str, values: Any, global_step: int) -> None:
                rec.append(("histogram", tag, np.asarray(values), global_step))

            def add_image(self, tag: str, image: Any, global_step: int, dataformats: str) -> None:
                assert dataformats == "HWC"
                rec.append(("image", tag, np.asarray(image), global_step))

        return _Writer()


def _fake_trainer(loggers: list[Any], **kw: Any) -> SimpleNamespace:
    state = {"sanity_checking": False, "current_epoch": 0, "global_step": 5, "is_global_zero": True}
    return SimpleNamespace(loggers=loggers, **{**state, "world_size": 1, **kw})


def test_sv_change_logger_sends_histograms_and_scalars() -> None:
    model = _TinySVF()
    tb = object.__new__(_RecordingTB)
    tb.calls = []
    SingularValueChangeLogger(num_bins=8).on_validation_epoch_end(_fake_trainer([tb]), model)
    n2 = model.layer2.s0.numel()
    n3 = sum(m.s0.numel() for m in model.layer3)
    assert model.logged["sv_change/layer2_mean_abs"] == pytest.approx(0.5, rel=1e-6)
    assert model.logged["sv_change/layer2_mean"] == pytest.approx(0.5, rel=1e-6)
    assert model.logged["sv_change/layer3_mean"] == pytest.approx(-0.25, rel=1e-6)
    assert model.logged["sv_change/layer3_max_abs"] == pytest.approx(0.25, rel=1e-6)
    assert [(c[0], c[1], c[3]) for c in tb.calls] == [
        ("histogram", "sv_change/layer2", 5),
        ("histogram", "sv_change/layer3", 5),
    ]
    assert tb.calls[0][2].shape == (n2,) and tb.calls[1][2].shape == (n3,)
    np.testing.assert_allclose(tb.calls[1][2], -0.25, rtol=1e-6)


def test_sv_change_logger_is_a_no_op_without_svf_layers(caplog: pytest.LogCaptureFixture) -> None:
    class Plain(_TinySVF):
        def __init__(self) -> None:
            pl.LightningModule.__init__(self)
            self.layer2 = nn.Conv2d(3, 3, 1)
            self.logged = {}

    model, callback = Plain(), SingularValueChangeLogger()
    with caplog.at_level(logging.INFO, logger="svfseg.lightning.sv_logging"):
        for _ in range(3):
            callback.on_validation_epoch_end(_fake_trainer([]), model)
    assert model.logged == {}
    assert [r.message for r in caplog.records].count(
        "SingularValueChangeLogger: the model has no SVF layers; nothing to log"
    ) == 1


def test_every_n_epochs_and_sanity_check_are_respected() -> None:
    model, callback = _TinySVF(), SingularValueChangeLogger(every_n_epochs=2)
    callback.on_validation_epoch_end(_fake_trainer([]), model)  # epoch 0: not due
    assert model.logged == {}
    trainer = _fake_trainer([])
    trainer.current_epoch, trainer.sanity_checking = 1, True
    callback.on_validation_epoch_end(trainer, model)
    assert model.logged == {}
    trainer.sanity_checking = False
    callback.on_validation_epoch_end(trainer, model)
    assert set(model.logged) == {
        f"sv_change/layer{k}_{s}" for k in (2, 3) for s in ("mean_abs", "mean", "max_abs")
    }
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        ExamplePredictionLogger(every_n_epochs=0)


def _normalised(rgb: np.ndarray) -> Tensor:
    """(B,H,W,3) uint8 -> (B,3,H,W) normalised like svfseg.data.transforms.to_tensor."""
    mean, std = np.asarray(IMAGENET_MEAN) * 255.0, np.asarray(IMAGENET_STD) * 255.0
    return torch.from_numpy(((rgb - mean) / std).astype(np.float32)).permute(0, 3, 1, 2)


def test_prediction_grid_layout_and_pixels() -> None:
    rng = np.random.default_rng(0)
    b, h, w = 2, 20, 24
    query = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    support = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    q_mask = np.zeros((b, h, w), np.int64)
    q_mask[:, 5:10, 5:12] = 1
    q_mask[:, -2:] = 255
    s_mask = np.zeros((b, h, w), np.int64)
    s_mask[:, :4] = 1
    pred = np.zeros((b, h, w), np.int64)
    pred[1, 0:6, 0:6] = 1
    grid = render_prediction_grid(
        _normalised(query),
        torch.from_numpy(q_mask),
        _normalised(support),
        torch.from_numpy(s_mask),
        torch.from_numpy(pred),
    )
    top = header_height(w)
    assert grid.shape == (top + b * h + (b - 1) * 2, 4 * w + 3 * 2, 3) and grid.dtype == np.uint8
    assert (grid[:top] < 128).any()  # column titles are drawn
    for row in range(b):
        panels = {}
        for col in range(len(COLUMNS)):
            y, x = panel_origin(row, col, h, w)
            panels[col] = grid[y : y + h, x : x + w].astype(int)
        np.testing.assert_array_equal(panels[3], mask_panel(q_mask[row]))
        bg = q_mask[row] == 0
        assert np.abs(panels[0][bg] - query[row][bg].astype(int)).max() <= 1  # de-normalised exactly
        fg = q_mask[row] == 1
        blended = np.round(0.5 * query[row][fg] + 0.5 * np.asarray(GT_COLOUR)).astype(int)
        assert np.abs(panels[0][fg] - blended).max() <= 1
        p = pred[row] == 1
        assert np.abs(panels[2][~p] - query[row][~p].astype(int)).max() <= 1
        if p.any():
            blended = np.round(0.5 * query[row][p] + 0.5 * np.asarray(PRED_COLOUR)).astype(int)
            assert np.abs(panels[2][p] - blended).max() <= 1
        s_fg = s_mask[row] == 1
        assert np.abs(panels[1][~s_fg] - support[row][~s_fg].astype(int)).max() <= 1


def _episode_batch(b: int, h: int, w: int, seed: int) -> dict[str, Tensor]:
    rng = np.random.default_rng(seed)
    q_mask = torch.from_numpy((rng.random((b, h, w)) > 0.6).astype(np.int64))
    return {
        "query_img": _normalised(rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)),
        "query_mask": q_mask,
        "support_img": _normalised(rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)).unsqueeze(1),
        "support_mask": torch.from_numpy((rng.random((b, 1, h, w)) > 0.5).astype(np.int64)),
        "class_id": torch.arange(b) + 10 * seed,
    }


class _Oracle:
    """Stands in for the LightningModule: predicts the query mask exactly; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: dict[str, Tensor], with_target: bool = True) -> SimpleNamespace:
        assert not with_target
        self.calls += 1
        fg = batch["query_mask"].float()
        return SimpleNamespace(logits=torch.stack([1 - fg, fg], dim=1))


def test_example_prediction_logger_collects_the_first_episodes(tmp_path: Path) -> None:
    tb = object.__new__(_RecordingTB)
    tb.calls = []
    trainer = _fake_trainer([tb], default_root_dir=str(tmp_path))
    oracle, callback = _Oracle(), ExamplePredictionLogger(n_examples=3)
    first, second, third = (_episode_batch(2, 16, 18, seed) for seed in (1, 2, 3))
    callback.on_validation_epoch_start(trainer, oracle)
    callback.on_validation_batch_end(trainer, oracle, None, _episode_batch(2, 16, 18, 9), 0, dataloader_idx=1)
    for i, batch in enumerate((first, second, third)):
        callback.on_validation_batch_end(trainer, oracle, None, batch, i, dataloader_idx=0)
    assert oracle.calls == 2  # two episodes of the first batch, one of the second, none of the third
    callback.on_validation_epoch_end(trainer, oracle)
    ((kind, tag, grid, step),) = tb.calls
    assert (kind, tag, step) == ("image", "val/examples", 5)
    masks = torch.cat([first["query_mask"], second["query_mask"][:1]]).numpy()
    assert grid.shape == (header_height(18) + 3 * 16 + 2 * 2, 4 * 18 + 3 * 2, 3)
    for row in range(3):
        y, x = panel_origin(row, 3, 16, 18)
        np.testing.assert_array_equal(grid[y : y + 16, x : x + 18], mask_panel(masks[row]))
        # an exact prediction: the prediction panel shows the same pixels as the query + GT panel, recoloured
        y0, x0 = panel_origin(row, 0, 16, 18)
        y2, x2 = panel_origin(row, 2, 16, 18)
        bg = masks[row] == 0
        np.testing.assert_array_equal(
            grid[y2 : y2 + 16, x2 : x2 + 18][bg], grid[y0 : y0 + 16, x0 : x0 + 18][bg]
        )
    assert not (tmp_path / "predictions").exists()  # PNG files only with a CSV logger

    lonely = _fake_trainer([], default_root_dir=str(tmp_path))  # no logger could show the grid
    oracle = _Oracle()
    callback.on_validation_epoch_start(lonely, oracle)
    callback.on_validation_batch_end(lonely, oracle, None, first, 0, dataloader_idx=0)
    callback.on_validation_epoch_end(lonely, oracle)
    assert oracle.calls == 0


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_wandb_offline_run_logs_histograms_images_and_lr(
    synthetic_pascal, tmp_path: Path, wandb_env: Path
) -> None:
    import wandb

    out = tmp_path / "run"
    _train(synthetic_pascal, out, ["logger=wandb"])
    assert wandb.run is None  # finished by close_loggers
    run_dir = offline_run(out)
    records = read_wandb_records(run_dir)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "baseline-resnet50-svf-synthetic" and run.job_type == "svf"
    assert list(run.tags) == ["baseline", "resnet50", "svf", "synthetic", "fold0", "1shot"]
    assert exit_code(records) == 0
    rows = history_rows(records)

    # one singular-value-change histogram per converted stage, equal to the checkpoint's s / s0 - 1
    changes = changes_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert sorted(changes) == list(SVF_STAGES)
    for stage in SVF_STAGES:
        hists = [r for r in rows if f"sv_change/{stage}/_type" in r]
        assert len(hists) == 1 and hists[0][f"sv_change/{stage}/_type"] == "histogram"
        counts, edges = np.histogram(changes[stage], bins=64)
        assert hists[0][f"sv_change/{stage}/values"] == counts.tolist()
        np.testing.assert_allclose(hists[0][f"sv_change/{stage}/bins"], edges, rtol=1e-9, atol=1e-15)
        assert np.abs(changes[stage]).max() > 0  # the values did move

    # the example-prediction grid, saved as a media file of the run
    (image_row,) = [r for r in rows if "val/examples/_type" in r]
    (name,) = image_row["val/examples/filenames"]
    png = cv2.imread(str(run_dir / "files" / name))
    eval_size = 65  # conf/debug/tiny.yaml
    assert png.shape == (header_height(eval_size) + 4 * eval_size + 3 * 2, 4 * eval_size + 3 * 2, 3)
    assert image_row["val/examples/captions"][0].startswith("epoch 0; rows (class: fg IoU): ")

    # learning rates per step: the head group follows the cosine schedule from optim.lr
    lrs = [(r["trainer/global_step"], r["lr-SGD/head"]) for r in rows if "lr-SGD/head" in r]
    steps = 4  # trainer.limit_train_batches of the tiny profile
    assert [s for s, _ in lrs] == list(range(steps))
    expected = [0.015 * 0.5 * (1 + np.cos(np.pi * s / steps)) for s in range(steps)]
    np.testing.assert_allclose([v for _, v in lrs], expected, rtol=1e-6)
    assert any("lr-SGD/backbone.layer2" in r for r in rows)
    assert any("val/miou" in r for r in rows) and any("train/loss" in r for r in rows)


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_run(synthetic_pascal, tmp_path: Path, wandb_env: Path) -> None:
    """A resume (here extending a finished run by one epoch) logs into the run's W&B run, not a new one
    per attempt; a new run folder gets its own."""
    out = tmp_path / "run"
    _train(synthetic_pascal, out, ["logger=wandb"])
    run_id = (out / "wandb" / "svfseg-wandb-id").read_text().strip()
    assert offline_run(out).name.endswith(f"-{run_id}")
    extend = [
        "dataset.epochs=2",
        "trainer.max_epochs=2",
        "resume_changes=[dataset.epochs,trainer.max_epochs]",
    ]
    _train(synthetic_pascal, out, ["logger=wandb", "ckpt_path=last", *extend])
    runs = sorted((out / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>; wandb appends -1 to the second when both attempts start within one second
    assert len(runs) == 2 and all(
        re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", r.name) for r in runs
    ), runs
    records = read_wandb_records(runs[1])
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == run_id
    steps = [r["trainer/global_step"] for r in history_rows(records) if "lr-SGD/head" in r]
    assert steps == [4, 5, 6, 7]  # the second epoch continues the first one's steps
    other = tmp_path / "other"
    _train(synthetic_pascal, other, ["logger=wandb"])
    assert (other / "wandb" / "svfseg-wandb-id").read_text().strip() != run_id


@pytest.mark.slow
def test_csv_run_writes_prediction_pngs_and_sv_change_scalars(synthetic_pascal, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(synthetic_pascal, out, [])
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("sv_change/layer2_mean_abs")]
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    changes = changes_from_checkpoint(out / "checkpoints" / "last.ckpt")
    for stage in SVF_STAGES:
        values = changes[stage]
        assert float(rows[0][f"sv_change/{stage}_mean_abs"]) == pytest.approx(np.abs(values).mean(), rel=1e-5)
        assert float(rows[0][f"sv_change/{stage}_mean"]) == pytest.approx(values.mean(), rel=1e-5)
        assert float(rows[0][f"sv_change/{stage}_max_abs"]) == pytest.approx(np.abs(values).max(), rel=1e-5)
    assert not any(f"sv_change/{s}_mean" in rows[0] for s in ("layer0", "layer1"))  # not converted

    png_path = out / "predictions" / "epoch_000.png"
    grid = cv2.imread(str(png_path))[..., ::-1]
    # the GT column shows the first validation episodes' query masks
    root, min_pixels = synthetic_pascal
    cfg = tiny_train_config(root, out, min_pixels=min_pixels, extra=["finetune=svf"])
    datamodule = build_datamodule(TrainRun.from_config(cfg))
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()[0]))
    masks = batch["query_mask"].numpy()
    n, h, w = 4, masks.shape[1], masks.shape[2]
    assert masks.shape[0] == 4  # eval_batch_size of the tiny profile: the 4 examples are this batch
    assert grid.shape == (header_height(w) + n * h + (n - 1) * 2, 4 * w + 3 * 2, 3)
    for row in range(n):
        y, x = panel_origin(row, 3, h, w)
        np.testing.assert_array_equal(grid[y : y + h, x : x + w], mask_panel(masks[row]))


@pytest.mark.slow
def test_a_failing_run_still_closes_the_wandb_run(
    synthetic_pascal, tmp_path: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    original = FewShotSegModule.training_step

    def failing_step(self: FewShotSegModule, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if batch_idx == 2:
            raise RuntimeError("injected failure at batch 2")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(FewShotSegModule, "training_step", failing_step)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected failure at batch 2"):
        _train(synthetic_pascal, out, ["logger=wandb"])
    assert wandb.run is None
    records = read_wandb_records(offline_run(out))
    assert exit_code(records) == 1  # marked failed, not left running
    steps = [r["trainer/global_step"] for r in history_rows(records) if "train/loss" in r]
    assert steps == [0, 1]


def test_close_loggers_survives_a_logger_that_fails_to_close(
    tmp_path: Path, wandb_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    class Broken:
        def finalize(self, status: str) -> None:
            raise OSError("disk full")

    logger = build_wandb_logger({"project": "p", "save_dir": str(tmp_path), "mode": "offline"})
    logger.log_metrics({"x": 1.0}, step=0)
    assert wandb.run is not None
    close_loggers([Broken(), logger], status="failed")
    assert wandb.run is None and logger._experiment is None
    assert "logger Broken failed to finalize: disk full" in caplog.text
    assert exit_code(read_wandb_records(offline_run(tmp_path))) == 1


@pytest.mark.slow
def test_the_api_key_is_never_written(
    synthetic_pascal,
    tmp_path: Path,
    wandb_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        # the key in the environment *and* typed into the config (a mistake svfseg must contain)
        _train(synthetic_pascal, out, ["logger=[csv,wandb]", f"+logger.wandb.api_key={FAKE_KEY}"])
    assert exit_code(read_wandb_records(offline_run(out))) == 0  # everything W&B writes is on disk
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # the run dir, wandb's own dirs, HOME
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "metrics.csv" for p in files)
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "hparams.yaml" for p in files)
    leaked = [str(p) for p in files if FAKE_KEY.encode() in p.read_bytes()]
    assert leaked == []
    assert FAKE_KEY not in caplog.text
    captured = capfd.readouterr()
    assert FAKE_KEY not in captured.out + captured.err
    assert "ignored ['api_key'] in the wandb logger config" in caplog.text
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["svfseg"]["config"]["logger"]["wandb"]["api_key"] == REDACTED
    assert saved["svfseg"]["config"]["logger"]["wandb"]["project"] == "svfseg"
