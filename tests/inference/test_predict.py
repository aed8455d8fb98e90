"""Using a trained model: predict.py on one's own images, bad inputs, export, class names in metrics."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from svfseg.data.class_names import class_names
from svfseg.inference import PredictInputError, Predictor, read_supports
from svfseg.inference.export import load_exported
from svfseg.lightning.module import FewShotSegModule
from svfseg.metrics.original_size import predict_at_original_size
from svfseg.svf import svf_layers, svf_state_dict
from svfseg.tasks.builders import build_datamodule
from svfseg.tasks.evaluate import evaluate
from svfseg.tasks.figure import TILE, figure_from_predictions, make_figure
from svfseg.tasks.predict import predict
from svfseg.tasks.resolve import TrainRun
from svfseg.tasks.train import train
from tests.helpers.cli import REPO, run_cli
from tests.helpers.hydra import compose_config, tiny_train_config

N_EPISODES = 12


@pytest.fixture(scope="module")
def trained(synthetic_pascal: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny SVF baseline run on the synthetic data (one epoch), its checkpoint and config."""
    root, min_pixels = synthetic_pascal
    out = tmp_path_factory.mktemp("trained")
    cfg = tiny_train_config(
        root, out, min_pixels=min_pixels, extra=["trainer.max_epochs=1", f"dataset.n_episodes={N_EPISODES}"]
    )
    result = train(cfg)
    return SimpleNamespace(root=Path(root), out=out, cfg=cfg, ckpt=Path(result["checkpoint"]))


def _episodes(trained: SimpleNamespace) -> tuple[Any, list[dict[str, Any]]]:
    """The module in eval mode and the first evaluation episodes with their files."""
    module = FewShotSegModule.load_from_checkpoint(
        trained.ckpt, map_location="cpu", weights_only=True, strict=True, load_pretrained=False
    ).eval()
    datamodule = build_datamodule(TrainRun.from_config(trained.cfg))
    datamodule.setup("test")
    dataset = datamodule.eval_dataloader(int(trained.cfg.dataset.eval_seeds[0])).dataset
    table = dataset.table
    episodes = []
    for i in range(4):
        episodes.append(
            {
                "sample": dataset[i],
                "class_id": table.class_ids[i],
                "query": trained.root / table.queries[i][0],
                "supports": [(trained.root / img, trained.root / lab) for img, lab in table.supports[i]],
            }
        )
    return module, episodes


def _eval_path_mask(module: FewShotSegModule, sample: dict[str, Any]) -> np.ndarray:
    """What evaluation predicts for one episode, at the query's original size."""
    batch = {
        k: (v[None] if torch.is_tensor(v) else torch.tensor([v])) for k, v in sample.items() if k != "ori_hw"
    }
    with torch.inference_mode():
        logits = module(batch, with_target=False).logits
    pred, _ = predict_at_original_size(logits, batch["label_ori"], [sample["ori_hw"]])
    h, w = sample["ori_hw"]
    return pred[0, :h, :w].numpy().astype(np.uint8)


def test_predict_py_writes_the_evaluation_mask_of_each_episode(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    module, episodes = _episodes(trained)
    for n, ep in enumerate(episodes):
        out = tmp_path / f"ep{n}"
        images = [str(img) for img, _ in ep["supports"]]
        masks = [str(lab) for _, lab in ep["supports"]]
        cfg = compose_config(
            "predict",
            [
                f"ckpt_path={trained.out}",  # a run directory: its checkpoints/best.ckpt
                f"support=[{','.join(images)}]",
                f"support_masks=[{','.join(masks)}]",
                f"support_class={ep['class_id']}",
                f"query={ep['query']}",
                f"paths.output_dir={out}",
                "progress=false",
            ],
        )
        predict(cfg)
        mask = np.array(Image.open(out / "masks" / f"{ep['query'].stem}.png"))
        original = np.array(Image.open(ep["query"]))
        assert mask.shape == original.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 1}
        np.testing.assert_array_equal(mask, _eval_path_mask(module, ep["sample"]))
        overlay = np.array(Image.open(out / "overlays" / f"{ep['query'].stem}.png"))
        assert overlay.shape == (*original.shape[:2], 3)
        record = json.loads((out / "predictions.json").read_text())
        assert record["k"] == 1 and record["trained_shot"] == 1 and record["shot_note"] is None
        assert record["checkpoint"] == str(trained.ckpt)
        assert record["run"] == module.spec.identity()
        assert record["merged_svf_layers"] == 3 * 4 + 3 * 6 + 3 * 3 + 3  # layer2-4 convs + downsamples
        (query,) = record["queries"]
        assert query == {
            "image": str(ep["query"].resolve()),
            "mask": f"masks/{ep['query'].stem}.png",
            "overlay": f"overlays/{ep['query'].stem}.png",
            "height": original.shape[0],
            "width": original.shape[1],
            "foreground_fraction": round(float(mask.mean()), 6),
        }
        assert record["supports"] == [{"image": i, "mask": m} for i, m in zip(images, masks, strict=True)]


def test_predict_cli_folder_of_queries_with_0_255_masks(trained: SimpleNamespace, tmp_path: Path) -> None:
    _, episodes = _episodes(trained)
    ep = episodes[0]
    queries = tmp_path / "queries"
    queries.mkdir()
    for e in episodes:
        (queries / e["query"].name).write_bytes(e["query"].read_bytes())
    # a 0/255 support mask (non-zero = foreground), made from the class-id label
    label = np.array(Image.open(ep["supports"][0][1]))
    binary = tmp_path / "support_mask.png"
    Image.fromarray(np.where(label == ep["class_id"], 255, 0).astype(np.uint8)).save(binary)
    out = tmp_path / "out"
    run_cli(
        [
            "predict.py",
            f"ckpt_path={trained.ckpt}",
            f"support=[{ep['supports'][0][0]}]",
            f"support_masks=[{binary}]",
            f"query={queries}",
            "mask_values=255",
            f"paths.output_dir={out}",
            "device=cpu",
        ],
        REPO,
    )
    record = json.loads((out / "predictions.json").read_text())
    assert [Path(q["image"]).name for q in record["queries"]] == sorted(p.name for p in queries.iterdir())
    for q in record["queries"]:
        mask = np.array(Image.open(out / q["mask"]))
        assert set(np.unique(mask).tolist()) <= {0, 255} and mask.shape == (q["height"], q["width"])
    # the README's figure of a predict run: the support, then exactly the overlays predict wrote
    figure = figure_from_predictions(out, tmp_path / "example.png")
    n = len(record["queries"])
    with Image.open(figure) as im:
        assert im.size == ((n + 1) * TILE + 8 * n, TILE)
        last = np.asarray(im.convert("RGB"))[:, -TILE:]
    with Image.open(out / record["queries"][-1]["overlay"]) as ov:
        expected = np.asarray(ov.convert("RGB").resize((TILE, TILE), Image.Resampling.BILINEAR))
    assert np.abs(last.astype(int) - expected.astype(int)).mean() < 8  # the same picture (palette-quantised)


def test_more_supports_than_the_training_shot_average_and_warn_once(
    trained: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    _, episodes = _episodes(trained)
    ep = episodes[0]
    pairs = ep["supports"] + episodes[0]["supports"]
    supports = read_supports([p[0] for p in pairs], [p[1] for p in pairs], ep["class_id"])
    predictor = Predictor.from_checkpoint(trained.ckpt, device="cpu")
    with caplog.at_level("WARNING"):
        masks = [p.mask for p in predictor.predict(supports, [ep["query"], ep["query"]])]
        predictor.check_shot(2)
    warnings = [
        r.getMessage() for r in caplog.records if "averages the 2 support prototypes" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    # two copies of one support average to the one-support prototype and prior: the 1-shot mask
    one = next(predictor.predict(supports[:1], [ep["query"]])).mask
    np.testing.assert_array_equal(masks[0], one)


def test_bam_refuses_another_number_of_supports() -> None:
    fake = SimpleNamespace(spec=SimpleNamespace(method_name="bam"), trained_shot=5, _warned_shot=False)
    with pytest.raises(
        PredictInputError, match=r"bam was trained with shot=5 .* but 1 were given; pass 5 supports"
    ):
        Predictor.check_shot(fake, 1)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ bad inputs
def _bad_inputs(tmp: Path, trained: SimpleNamespace) -> dict[str, tuple[dict[str, str], str]]:
    _, episodes = _episodes(trained)
    image, label = episodes[0]["supports"][0]
    query = str(episodes[0]["query"])
    small = tmp / "small_mask.png"
    Image.fromarray(np.ones((10, 12), np.uint8)).save(small)
    empty = tmp / "empty_mask.png"
    Image.fromarray(np.zeros(np.array(Image.open(label)).shape, np.uint8)).save(empty)
    text = tmp / "notes.jpg"
    text.write_text("not an image")
    foreign = tmp / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    blocker = tmp / "a_file"
    blocker.write_text("x")
    ok = {"support": f"[{image}]", "support_masks": f"[{label}]", "query": query}
    return {
        "support without mask": (
            {**ok, "support": f"[{image},{image}]"},
            rf"support image\(s\) \['{image}'\] have no mask",
        ),
        "size mismatch": (
            {**ok, "support_masks": f"[{small}]"},
            rf"support mask {small} is 12x10 \(WxH\) but its image",
        ),
        "empty mask": ({**ok, "support_masks": f"[{empty}]"}, rf"support mask {empty} has no non-zero pixel"),
        "class absent": (
            {**ok, "support_class": "7"},
            rf"support mask {label} has no pixel of support_class=7 \(classes present: ",
        ),
        "non-image query": ({**ok, "query": str(text)}, rf"query image {text} cannot be read"),
        "foreign checkpoint": ({**ok, "ckpt_path": str(foreign)}, rf"{foreign} was not written by svfseg"),
        "unwritable output": ({**ok, "out": str(blocker / "out")}, rf"{blocker} is a file, not a folder"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "support without mask",
        "size mismatch",
        "empty mask",
        "class absent",
        "non-image query",
        "foreign checkpoint",
        "unwritable output",
    ],
)
def test_bad_inputs_are_refused_naming_the_file_and_nothing_is_written(
    trained: SimpleNamespace, tmp_path: Path, case: str
) -> None:
    options, match = _bad_inputs(tmp_path, trained)[case]
    options = dict(options)
    out = Path(options.pop("out", str(tmp_path / "out")))
    overrides = [f"ckpt_path={options.pop('ckpt_path', str(trained.ckpt))}", f"paths.output_dir={out}"]
    overrides += [f"{k}={v}" for k, v in options.items()]
    with pytest.raises((PredictInputError, ValueError, FileNotFoundError)) as info:
        predict(compose_config("predict", [*overrides, "progress=false"]))
    assert info.match(match)
    assert not out.exists() or not any(out.iterdir())


def test_predict_cli_reports_a_refused_input_without_a_traceback(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    """A bad query or device ended predict.py in a traceback (the message was clear, but train.py and
    eval.py print their refusals as one line each and exit 2)."""
    _, episodes = _episodes(trained)
    image, label = episodes[0]["supports"][0]
    good = {"support": f"[{image}]", "support_masks": f"[{label}]", "query": str(episodes[0]["query"])}
    nope = tmp_path / "nope.jpg"
    cases = [
        ({"query": str(nope)}, f"query {nope} is not a file, a folder or a glob"),
        ({"support_class": "7"}, f"support mask {label} has no pixel of support_class=7"),
    ]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "device=cuda asked for, but no CUDA device is visible"))
    for change, problem in cases:
        out = tmp_path / "out"
        options = [f"{k}={v}" for k, v in {**good, **change}.items()]
        proc = run_cli(
            ["predict.py", f"ckpt_path={trained.ckpt}", *options, f"paths.output_dir={out}"], REPO, ok=False
        )
        assert proc.returncode == 2, proc.stderr
        assert "predict.py: 1 problem in the config, nothing was run:" in proc.stderr
        assert problem in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()


# ------------------------------------------------------------------------------------------ export
def test_export_writes_a_plain_model_with_the_checkpoint_outputs_and_the_svf_artifact(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    module, episodes = _episodes(trained)
    run_cli(["-m", "svfseg.inference.export", str(trained.ckpt), "--out", str(tmp_path / "export")], REPO)
    plain = load_exported(tmp_path / "export")
    assert next(svf_layers(plain), None) is None  # no svfseg SVF layer left
    assert all(
        type(m).__module__.startswith("torch.nn") for m in plain.backbone.modules() if not list(m.children())
    )
    artifact = torch.load(tmp_path / "export" / "svf.pt", weights_only=True)
    expected = svf_state_dict(module.model.backbone)
    assert artifact.keys() == expected.keys()
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert torch.equal(artifact[key], value), key
    batch = {
        k: (v[None] if torch.is_tensor(v) else torch.tensor([v]))
        for k, v in episodes[0]["sample"].items()
        if k != "ori_hw"
    }
    with torch.inference_mode():
        ref = module(batch, with_target=False).logits
        out = plain(batch["query_img"], batch["support_img"], batch["support_mask"]).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    record = json.loads((tmp_path / "export" / "run.json").read_text())
    assert (
        record["files"] == {"model": "model.pt", "svf": "svf.pt"}
        and record["identity"] == module.spec.identity()
    )


def test_export_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    proc = run_cli(
        ["-m", "svfseg.inference.export", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")],
        REPO,
        ok=False,
    )
    assert proc.returncode == 2 and f"ckpt_path={tmp_path / 'nope.ckpt'} does not exist" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_old_svf_export_command_names_the_new_one_and_imports_no_application(tmp_path: Path) -> None:
    proc = run_cli(["-m", "svfseg.svf", "export", "run/best.ckpt", "--out", "exp"], REPO, ok=False)
    assert proc.returncode == 2 and not proc.stdout
    assert "python -m svfseg.inference.export run/best.ckpt --out exp" in proc.stderr
    # the SVF core is a library: its command line loads nothing of svfseg outside svfseg.svf but the
    # message helpers (a standard-library-only leaf module that imports nothing of svfseg)
    code = (
        "import sys, svfseg.svf.__main__; "
        "print([m for m in sys.modules if m.startswith('svfseg.') and not m.startswith('svfseg.svf')])"
    )
    assert run_cli(["-c", code], REPO).stdout.strip() == "['svfseg.messages']"
    leaf = "import sys, svfseg.messages; print([m for m in sys.modules if m.startswith('svfseg.')])"
    assert run_cli(["-c", leaf], REPO).stdout.strip() == "['svfseg.messages']"


# ------------------------------------------------------------------------------------------ class names
def test_eval_with_two_seeds_writes_per_class_mean_and_std_with_names(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={trained.ckpt}",
            f"paths.output_dir={tmp_path}",
            "seeds=[321,322]",
            f"n_episodes={N_EPISODES}",
            "+trainer.enable_progress_bar=false",
        ],
    )
    record = evaluate(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(record))
    names = class_names("synthetic")
    novel = [int(c) for c in record["class_iou"]]
    assert novel == [1, 2, 3, 4, 5]  # fold 0's evaluation classes
    for cid, entry in record["class_iou"].items():
        per_seed = [record["per_seed"][s]["class_iou"][cid] for s in ("321", "322")]
        assert entry["name"] == names[int(cid)]
        assert entry["per_seed"] == {"321": per_seed[0], "322": per_seed[1]}
        assert entry["iou"] == pytest.approx(statistics.fmean(per_seed), abs=1e-12)
        assert entry["std"] == pytest.approx(statistics.pstdev(per_seed), abs=1e-12)
    for seed in ("321", "322"):
        seed_miou = statistics.fmean(record["per_seed"][seed]["class_iou"].values())
        assert seed_miou == pytest.approx(record["per_seed"][seed]["miou"], abs=1e-6)


def test_logged_metric_names_carry_the_class_names(trained: SimpleNamespace) -> None:
    with (trained.out / "csv" / "metrics.csv").open() as fh:
        columns = set(next(csv.reader(fh)))
    names = class_names("synthetic")
    for prefix, classes in (
        ("val", [1, 2, 3, 4, 5]),
        ("test", [1, 2, 3, 4, 5]),
        ("train_episodes", range(6, 21)),
    ):
        for c in classes:
            assert f"{prefix}/iou/{names[c].replace(' ', '_')}" in columns, (prefix, c)


def test_tables_print_a_per_class_table(trained: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text((trained.out / "metrics.json").read_text())
    proc = run_cli(["-m", "svfseg.tables", str(tmp_path), "--per-class"], REPO)
    record = json.loads((trained.out / "metrics.json").read_text())
    names = class_names("synthetic")
    assert "1-shot, fold 0: IoU per class (%)" in proc.stdout
    header = "| setting | " + " | ".join(f"{names[c]} ({c})" for c in range(1, 6)) + " | mean |"
    assert header in proc.stdout
    values = " | ".join(f"{100 * record['class_iou'][str(c)]['iou']:.2f}" for c in range(1, 6))
    assert f"| baseline resnet50 svf | {values} | {100 * record['miou']:.2f} |" in proc.stdout


def test_readme_figure_tool_draws_the_support_and_query_overlays(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    path = make_figure(trained.ckpt, tmp_path / "fig.png", n_queries=1)
    with Image.open(path) as im:
        assert im.size == (2 * TILE + 8, TILE)
