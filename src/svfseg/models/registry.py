"""Name -> few-shot method. A new method registers itself and gets every strategy, config and tool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from svfseg.models.base import FewShotModel

ModelFactory = Callable[..., FewShotModel]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class or factory decorator: ``@register_model("baseline")``; a name can be taken once."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name]}")
        _REGISTRY[name] = factory
        return factory

    return decorate


def registered_models() -> tuple[str, ...]:
    """Every method name ``build_model`` accepts (built-in methods are imported first)."""
    _import_builtin()
    return tuple(sorted(_REGISTRY))


def build_model(name: str, backbone: nn.Module, *, shot: int, **options: Any) -> FewShotModel:
    """Instantiate method ``name`` on ``backbone``; unknown names list the registered ones."""
    _import_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"method={name!r} is unknown: choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](backbone, shot=shot, **options)


def _import_builtin() -> None:
    # imported here (not at module top) because the methods import this module to register themselves
    import svfseg.models.bam
    import svfseg.models.baseline
    import svfseg.models.pfenet  # noqa: F401
