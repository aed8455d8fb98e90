"""Shared test settings: small thread count so two xdist workers share the 2 CI cores fairly."""

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread per xdist worker by default; an explicit OMP_NUM_THREADS (e.g. 2 for a single process) wins.
# Set in the environment too, so that every command a test starts (a benchmark, train.py) inherits it: a
# child with torch's default of one thread per core, beside the other worker, oversubscribes the cores,
# and its OpenMP threads wait on each other (the GPU check's CPU smoke run: 8 s alone, 59 s in the suite).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"] or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_pascal(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic Pascal-layout dataset shared by the end-to-end tests: (root, min_pixels)."""
    from svfseg.dataprep.synthetic import coverage_min_pixels, make_synthetic

    size = 96
    root = make_synthetic(
        "pascal", tmp_path_factory.mktemp("synthetic") / "pascal", n_train=120, n_val=60, size=size
    )
    return root, coverage_min_pixels(size)


@pytest.fixture(scope="session")
def proxy_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The learning tests' proxy-pretrained backbone, built once per test run.

    Under xdist every worker has its own base temp; their parent is shared, and the builder's file lock
    makes the first worker build while the others wait and then read the cache.
    """
    from svfseg.pretrain import build_proxy_weights
    from tests.helpers.learning import LEARNING_PROXY

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return build_proxy_weights(LEARNING_PROXY, shared / "proxy-weights").path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (port chosen by the OS) serving ``tmp_path / 'www'``: (base url, folder).

    The download tests (weights fetch, the CCP release) stay offline: only loopback traffic, stopped here.
    """
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest test files first (tests/durations.json), so the xdist workers of ``make test`` end
    together (tests/helpers/durations.py says why)."""
    from tests.helpers.durations import load_durations, longest_files_first

    items[:] = longest_files_first(items, load_durations())
