"""Name -> few-shot method. A new method registers itself and gets every strategy, config and tool."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from svfseg.models.base import FewShotModel

ModelFactory = Callable[..., FewShotModel]
_REGISTRY: dict[str, ModelFactory] = {}
_OPTIONS_OF: dict[str, Callable[..., Any]] = {}


def register_model(
    name: str, *, options_of: Callable[..., Any] | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Class or factory decorator: ``@register_model("baseline")``; a name can be taken once.

    ``options_of``: the callable whose keyword arguments are the method's config options, when the
    factory forwards them with ``**options`` (BAM's factory forwards to the BAM class).
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name]}")
        _REGISTRY[name] = factory
        if options_of is not None:
            _OPTIONS_OF[name] = options_of
        return factory

    return decorate


def registered_models() -> tuple[str, ...]:
    """Every method name ``build_model`` accepts (built-in methods are imported first)."""
    _import_builtin()
    return tuple(sorted(_REGISTRY))


def method_options(name: str) -> tuple[str, ...]:
    """Options a method accepts from ``conf/method/*.yaml``: its keyword arguments but backbone and shot."""
    _import_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"method={name!r} is unknown: choose one of {sorted(_REGISTRY)}")
    params = inspect.signature(_OPTIONS_OF.get(name, _REGISTRY[name])).parameters.values()
    named = (p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return tuple(sorted(n for n in named if n not in ("self", "backbone", "shot")))


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
