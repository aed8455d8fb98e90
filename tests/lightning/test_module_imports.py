"""The LightningModule stays clear of the offline dataset tools and what they import."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers.cli import REPO

PROBE = """
import json, sys
import torchmetrics  # noqa: F401
before = set(sys.modules)
import svfseg.lightning.module  # noqa: F401
from svfseg.data.fold import FoldSpec
FoldSpec("synthetic", 0).class_names()  # class names of the generated dataset, without its generator
added = sorted(set(sys.modules) - before)
print(json.dumps({"added": added, "pycocotools": any(m.split(".")[0] == "pycocotools" for m in sys.modules)}))
"""


def test_module_imports_no_offline_tool_nor_scipy_nor_pycocotools() -> None:
    """Importing ``svfseg.lightning.module`` (and naming a synthetic class) adds no scipy, pycocotools or
    ``svfseg.dataprep`` module.

    torchmetrics is imported first and its modules are not counted: torchmetrics itself imports scipy
    (``torchmetrics.functional`` -> ``scipy.signal``), which is not ours to avoid; what is checked is that
    svfseg adds no scipy module of its own (``scipy.io`` of the Pascal and CCP converters) and never
    reaches pycocotools at all.
    """
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=600, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    added = result["added"]
    assert "svfseg.lightning.module" in added
    assert [m for m in added if m.split(".")[0] == "scipy"] == []
    assert [m for m in added if m.startswith("svfseg.dataprep")] == []
    assert not result["pycocotools"]
