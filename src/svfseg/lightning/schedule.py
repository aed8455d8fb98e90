"""When an every-N-epochs logging callback runs (shared by the logging callbacks)."""

from __future__ import annotations

import pytorch_lightning as pl


def due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """True at the end of every ``every_n_epochs``-th epoch, never during the sanity check."""
    return not trainer.sanity_checking and (trainer.current_epoch + 1) % every_n_epochs == 0


def check_every(every_n_epochs: int) -> int:
    """``every_n_epochs`` as an int >= 1; the error names the value."""
    if int(every_n_epochs) < 1:
        raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
    return int(every_n_epochs)
