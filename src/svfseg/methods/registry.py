"""Name -> few-shot method: an explicit table of the built-in methods, open to methods of your own.

The table imports the method modules; the methods import nothing of it (no circle). A method is its
factory ``(backbone, *, shot, **options) -> FewShotModel``; a method that a run builds in its own way
(BAM: on its stage-1 PSPNet, not on the configured backbone) also names its ``from_run`` builder, which
:func:`svfseg.methods.factory.build_fewshot_model` calls instead of building the backbone first.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from svfseg.methods.bam import BAM, bam_from_run, build_bam
from svfseg.methods.base import FewShotModel
from svfseg.methods.baseline import BaselineASPP
from svfseg.methods.pfenet import PFENet

ModelFactory = Callable[..., FewShotModel]


@dataclass(frozen=True)
class Method:
    """One few-shot method of the table.

    Attributes:
        factory: ``(backbone, *, shot, **options) -> FewShotModel``.
        options_of: the callable whose keyword arguments are the method's config options, when the
            factory forwards them with ``**options`` (BAM's factory forwards to the BAM class).
        from_run: ``(backbone_spec: dict, *, fold: FoldSpec, load_pretrained: bool, **options)`` for a
            method that builds its own backbone from a run's specs; None: the run's backbone is built
            from its spec and handed to ``factory``.
    """

    factory: ModelFactory
    options_of: Callable[..., Any] | None = None
    from_run: Callable[..., FewShotModel] | None = None


BUILTIN_METHODS: dict[str, Method] = {
    "baseline": Method(BaselineASPP),
    "pfenet": Method(PFENet),
    "bam": Method(build_bam, options_of=BAM, from_run=bam_from_run),
}
_REGISTRY: dict[str, Method] = dict(BUILTIN_METHODS)


def register_model(
    name: str,
    *,
    options_of: Callable[..., Any] | None = None,
    from_run: Callable[..., FewShotModel] | None = None,
) -> Callable[[ModelFactory], ModelFactory]:
    """Class or factory decorator for a method of your own: ``@register_model("mine")``; a name is taken once.

    Registering a built-in method's own factory again is a no-op; see :class:`Method` for the arguments.
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].factory}")
        if name not in _REGISTRY:
            _REGISTRY[name] = Method(factory, options_of=options_of, from_run=from_run)
        return factory

    return decorate


def registered_models() -> tuple[str, ...]:
    """Every method name ``build_model`` accepts."""
    return tuple(sorted(_REGISTRY))


def method(name: str) -> Method:
    """The table entry of ``name``; an unknown name lists the registered ones."""
    if name not in _REGISTRY:
        raise ValueError(f"method={name!r} is unknown: choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def method_options(name: str) -> tuple[str, ...]:
    """Options a method accepts from ``conf/method/*.yaml``: its keyword arguments but backbone and shot."""
    entry = method(name)
    params = inspect.signature(entry.options_of or entry.factory).parameters.values()
    named = (p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return tuple(sorted(n for n in named if n not in ("self", "backbone", "shot")))


def build_model(name: str, backbone: nn.Module, *, shot: int, **options: Any) -> FewShotModel:
    """Instantiate method ``name`` on ``backbone``; unknown names list the registered ones."""
    return method(name).factory(backbone, shot=shot, **options)
