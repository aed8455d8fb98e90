"""Short runs from a proxy-pretrained backbone learn, on any CPU and thread count.

The backbone is the learning tests' proxy-pretrained narrow ResNet-50 (``proxy_weights`` fixture,
built once per test run). Margins come from ``benchmarks/learning_spread.py``: 5 seeds x 1 and 2 threads,
on AVX-512 and on AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``), 20 runs per strategy, the proxy rebuilt
in each setting (its float path, and so its weights, differ between settings). Measured for SVF and
freeze (mean, lowest value seen, largest deviation from the mean), see docs/mini-reproduction.md:

* mIoU - all-foreground mIoU: mean 0.362, lowest 0.284, max deviation 0.086;
* FB-IoU - all-background FB-IoU: mean 0.224, lowest 0.170, max deviation 0.063;
* first-epoch minus last-epoch mean loss: mean 0.285, lowest 0.245, max deviation 0.069;
* SVF's largest |s/s0 - 1|: lowest 0.015.

Each threshold is the mean minus at least 3x the largest deviation. The trivial masks are scored with
plain numpy on the very episodes the run is tested on, without svfseg.metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.learning_helpers import run_learning

MIOU_OVER_ALL_FOREGROUND = 0.10  # 0.362 - 3 x 0.086
FBIOU_OVER_ALL_BACKGROUND = 0.035  # 0.224 - 3 x 0.063
LOSS_DROP = 0.075  # 0.285 - 3 x 0.069
S_MOVED = 1e-3  # 15x below the smallest change seen: s trains, U and V do not (test_finetune)


def assert_learned(r: dict[str, Any]) -> None:
    assert r["n_classes"] == 5  # Pascal fold 0: five novel classes
    assert r["record_miou"] == pytest.approx(r["miou"])  # metrics.json says what train() returned
    assert r["epoch_loss"][0] - r["epoch_loss"][-1] > LOSS_DROP, r["epoch_loss"]
    assert r["miou"] > r["all_fg_miou"] + MIOU_OVER_ALL_FOREGROUND, r
    assert r["fbiou"] > r["all_bg_fbiou"] + FBIOU_OVER_ALL_BACKGROUND, r


@pytest.mark.slow
def test_svf_from_proxy_weights_learns_and_moves_singular_values(
    synthetic_pascal, proxy_weights: Path, tmp_path: Path
) -> None:
    result = run_learning(synthetic_pascal, tmp_path, proxy_weights, finetune="svf", seed=0)
    assert_learned(result)
    assert result["max_s_change"] > S_MOVED


@pytest.mark.slow
def test_learning_holds_with_one_and_two_threads(
    synthetic_pascal, proxy_weights: Path, tmp_path: Path
) -> None:
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            result = run_learning(
                synthetic_pascal, tmp_path / f"t{threads}", proxy_weights, finetune="freeze", seed=1
            )
            assert result["threads"] == threads
            assert_learned(result)
    finally:
        torch.set_num_threads(before)
