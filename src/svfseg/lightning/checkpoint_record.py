"""What an svfseg checkpoint says about its run: one record, read in one place.

The run is stored once, as the LightningModule's hyper-parameters (``hyper_parameters.run``, the
:class:`~svfseg.run_spec.RunSpec` as plain containers: fold, method, backbone, fine-tune strategy), which
is also what ``load_from_checkpoint`` rebuilds the module from. Identity and strategy are read from it.
The ``svfseg`` entry adds only what the spec cannot say: whether the state dict is in the strategy's
structure (``strategy_applied``) and the resolved config that eval.py rebuilds the data from.

Checkpoints of the earlier layout (format 1: ``svfseg.identity`` and ``svfseg.finetune`` stored beside
the hyper-parameters) are read as well; one without a run record is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from svfseg.run_spec import RunSpec

RECORD_FORMAT = 2


class CheckpointRecordError(ValueError):
    """A checkpoint's run record is missing or cannot be read."""


@dataclass(frozen=True)
class CheckpointRecord:
    """The run of a checkpoint (``run``), whether its weights are in the strategy's structure, its config."""

    run: RunSpec
    strategy_applied: bool
    config: dict[str, Any] | None = None

    @property
    def finetune(self) -> dict[str, Any]:
        """The fine-tune strategy the run was trained with (name and options)."""
        return dict(self.run.finetune)

    def entry(self) -> dict[str, Any]:
        """The ``svfseg`` entry a checkpoint stores beside the hyper-parameters (which hold ``run``)."""
        return {"format": RECORD_FORMAT, "strategy_applied": self.strategy_applied, "config": self.config}

    @classmethod
    def read(cls, checkpoint: dict[str, Any], *, source: str = "the checkpoint") -> CheckpointRecord:
        """The record of a loaded checkpoint dict; ``source`` names it in errors (e.g. ``ckpt_path=...``)."""
        meta = checkpoint.get("svfseg")
        if not isinstance(meta, dict):
            raise CheckpointRecordError(
                f"{source} has no 'svfseg' entry: it was not written by svfseg's FewShotSegModule"
            )
        run = (checkpoint.get("hyper_parameters") or {}).get("run")
        if not isinstance(run, dict):
            raise CheckpointRecordError(
                f"{source} holds no run record (hyper_parameters.run): it was written by an svfseg version "
                "before runs were recorded there and cannot be checked against this run; train it again"
            )
        version = meta.get("format", 1)
        if version == 1:  # identity and finetune stored beside the hyper-parameters
            if run.get("finetune") is None and meta.get("finetune") is not None:
                run = {**run, "finetune": meta["finetune"]}
            applied = meta.get("finetune") is not None
        elif version == RECORD_FORMAT:
            applied = bool(meta.get("strategy_applied"))
        else:
            raise CheckpointRecordError(
                f"{source} has run-record format {version!r}; this svfseg reads formats 1 and "
                f"{RECORD_FORMAT}: it was written by a newer svfseg, so update svfseg to read it"
            )
        try:
            spec = RunSpec.from_dict(run)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointRecordError(
                f"{source}: its run record (hyper_parameters.run) is invalid: {err}"
            ) from err
        return cls(run=spec, strategy_applied=applied, config=meta.get("config"))
