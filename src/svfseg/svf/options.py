"""``SVFOptions``: how a layer is converted and run, the one definition every SVF entry point shares.

``apply_svf``, ``SVFConv2d.from_conv`` / ``SVFLinear.from_linear`` and the ``svf`` fine-tune strategy all
take these fields; validation and the list of allowed values live only here, so a typo fails the same
way (naming the option, the value and the choices) wherever it is typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

SUBSPACES: tuple[str, ...] = ("u", "s", "v")
PARAMETRIZATIONS: tuple[str, ...] = ("direct", "exp")
EXECUTIONS: tuple[str, ...] = ("auto", "three_op")
SVD_DTYPES: tuple[str, ...] = ("float64", "float32")


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``; else an error naming the key, the value and the choices."""
    allowed = list(choices)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is invalid: choose one of {allowed}")
    return value


def normalise_train(train: Any) -> tuple[str, ...]:
    """Trainable subspaces in u, s, v order from ``"s"``, ``"us"``, ``"u+s"``, ``["u", "s"]`` or ``()``."""
    items = [train] if isinstance(train, str) else list(train) if isinstance(train, Iterable) else [train]
    letters: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"train={train!r} is invalid: use a subset of {list(SUBSPACES)}, e.g. ['s']")
        letters += [c for c in item.lower() if c not in "+, "]
    unknown = sorted(set(letters) - set(SUBSPACES))
    if unknown:
        raise ValueError(f"train={train!r} is invalid: unknown {unknown}; use a subset of {list(SUBSPACES)}")
    return tuple(t for t in SUBSPACES if t in letters)


def _dtype_name(value: Any) -> str:
    name = str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value
    if name not in SVD_DTYPES:
        raise ValueError(f"svd_dtype={value!r} is invalid: choose one of {list(SVD_DTYPES)}")
    return str(name)


@dataclass(frozen=True)
class SVFOptions:
    """Conversion and execution options of SVF layers (validated and normalised on construction).

    Args:
        train: subspaces that train, any subset of u / s / v (``()`` converts with everything frozen).
        parametrization: ``direct`` trains s itself; ``exp`` trains s_delta with s = s0 * exp(s_delta).
        execution: ``auto`` (factorised only when an SVF tensor needs a gradient, else one merged op) or
            ``three_op`` (always V-op -> scale -> U-op, the reference form).
        svd_dtype: precision of the SVD, ``float64`` (exact to fp32 rounding) or ``float32``; a
            ``torch.dtype`` is accepted.
    """

    train: tuple[str, ...] = ("s",)
    parametrization: str = "direct"
    execution: str = "auto"
    svd_dtype: str = "float64"

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", normalise_train(self.train))
        check_choice("parametrization", self.parametrization, PARAMETRIZATIONS)
        check_choice("execution", self.execution, EXECUTIONS)
        object.__setattr__(self, "svd_dtype", _dtype_name(self.svd_dtype))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (what a config or a keyword argument may set)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, options: SVFOptions | Mapping[str, Any] | None = None, **overrides: Any) -> SVFOptions:
        """Options from an object or mapping plus keyword overrides; unknown names fail with the allowed ones."""
        base = asdict(options) if isinstance(options, SVFOptions) else dict(options or {})
        base.update(overrides)
        unknown = sorted(set(base) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown SVF option(s) {unknown}; allowed: {list(cls.names())}")
        return cls(**base)

    @property
    def torch_svd_dtype(self) -> torch.dtype:
        return getattr(torch, self.svd_dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for logs and run records (lists, not tuples)."""
        return {**asdict(self), "train": list(self.train)}
