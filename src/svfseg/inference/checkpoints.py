"""Which checkpoint file a ``ckpt_path`` names: eval.py, predict.py and the export share this one rule.

``ckpt_path`` is a checkpoint file, or the output folder of a ``train.py`` run (its
``checkpoints/best.ckpt``, else ``checkpoints/last.ckpt``), or that run's ``checkpoints`` folder. The small
SVF artifact written next to a checkpoint (``best.svf.pt``) is refused with a message pointing to the
checkpoint beside it: it holds the trained singular values only, not a model to evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from svfseg.svf.state import FORMAT as SVF_ARTIFACT_FORMAT

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")
ARTIFACT_SUFFIX = ".svf.pt"


def _candidates(run_dir: Path) -> list[Path]:
    """The files a run directory is searched for, in order of preference."""
    return [run_dir / "checkpoints" / name for name in CHECKPOINT_NAMES] + [
        run_dir / name for name in CHECKPOINT_NAMES
    ]


def _svf_artifact(path: Path) -> dict[str, Any] | None:
    """The content of ``path`` when it is an SVF artifact (``format: svfseg.svf``), else None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint at all: the checkpoint loader names the problem
        return None
    return state if isinstance(state, dict) and state.get("format") == SVF_ARTIFACT_FORMAT else None


def artifact_message(path: Path) -> str:
    """Why an SVF artifact is not a checkpoint, and which file to pass instead."""
    stem = path.name[: -len(ARTIFACT_SUFFIX)] if path.name.endswith(ARTIFACT_SUFFIX) else path.stem
    beside = path.with_name(f"{stem}.ckpt")
    if beside.is_file():
        instead = f"pass the checkpoint next to it, ckpt_path={beside}"
    else:
        instead = f"pass the checkpoint it was saved with (here {beside} is missing) or the run directory"
    return (
        f"ckpt_path={path} is the small SVF artifact (the trained singular values, format "
        f"{SVF_ARTIFACT_FORMAT!r}), not a checkpoint: it holds no model to run; {instead}. To apply the "
        "artifact to a model of your own, see docs/svf-api.md (load_svf_state_dict)"
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run directory's best (else last) checkpoint.

    Raises FileNotFoundError naming every place looked at when there is none, and ValueError for the
    SVF artifact (``best.svf.pt``), which is not a checkpoint.
    """
    p = Path(str(path)).expanduser()
    if p.is_dir():
        candidates = _candidates(p)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(c.relative_to(p)) for c in candidates)
        raise FileNotFoundError(
            f"ckpt_path={p} is a folder without a checkpoint (looked for {looked} in it); pass a checkpoint "
            "file, or the output folder of a train.py run that has saved one"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"ckpt_path={p} does not exist (expected a checkpoint file, or the output folder of a train.py "
            "run holding checkpoints/best.ckpt)"
        )
    if _svf_artifact(p) is not None:
        raise ValueError(artifact_message(p))
    return p
