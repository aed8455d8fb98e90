"""``freeze``: the frozen-backbone baseline of every FSS method (PFENet, BAM, the SVF baseline)."""

from __future__ import annotations

from svfseg.finetune.base import FinetuneStrategy, NamedParams
from svfseg.methods.base import FewShotModel


class FreezeStrategy(FinetuneStrategy):
    """Nothing in the backbone trains; it runs under ``no_grad`` with BN in eval mode. Only the head trains.

    Takes no options: there is no backbone group whose lr could be scaled.
    """

    name = "freeze"

    def __init__(self) -> None:
        super().__init__()

    def options(self) -> dict[str, object]:
        return {}

    def select(self, model: FewShotModel) -> NamedParams:
        return []
