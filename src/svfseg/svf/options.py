"""``SVFOptions``: how a layer is converted and run, the one definition every SVF entry point shares.

``apply_svf``, ``SVFConv2d.from_conv`` / ``SVFLinear.from_linear`` and the ``svf`` fine-tune strategy all
take these fields; validation and the list of allowed values live only here, so a typo fails the same
way (naming the option, the value and the choices) wherever it is typed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

SUBSPACES: tuple[str, ...] = ("u", "s", "v")
PARAMETRIZATIONS: tuple[str, ...] = ("direct", "exp", "scale_shift")
DIRECTIONS: tuple[str, ...] = ("all", "top", "bottom")
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


def parse_k(k: Any, directions: str) -> int | float | None:
    """How many singular directions per group train: ``None`` for ``all``, else an int >= 1 or a fraction.

    An integer is a count (capped at each group's rank); a float in (0, 1] is a fraction of each group's
    rank, rounded up so that every group trains at least one value.
    """
    if directions == "all":
        if k is not None:
            raise ValueError(
                f"k={k!r} is set but directions='all' trains every singular value: set directions=top or "
                "directions=bottom to train k of them, or k=null"
            )
        return None
    fix = (
        f"use an integer >= 1 (a count per layer, capped at its rank) or a fraction in (0, 1] of each "
        f"layer's rank, e.g. k=8 or k=0.25 (directions={directions!r} needs k)"
    )
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"k={k!r} is invalid: {fix}")
    if (isinstance(k, int) and k < 1) or (isinstance(k, float) and not 0.0 < k <= 1.0):
        raise ValueError(f"k={k!r} is invalid: {fix}")
    return k


def resolve_k(k: int | float | None, group_rank: int) -> int:
    """Trained directions of one group of rank ``group_rank`` (see :func:`parse_k`)."""
    if k is None:
        return group_rank
    if isinstance(k, float):
        return max(1, min(group_rank, math.ceil(k * group_rank - 1e-9)))
    return min(int(k), group_rank)


def _parse_residual_rank(value: Any, directions: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"residual_rank={value!r} is invalid: use an integer >= 0 (0: no low-rank update of the frozen "
            "directions' subspace; SALT uses e.g. 4)"
        )
    if value and directions == "all":
        raise ValueError(
            f"residual_rank={value} needs frozen directions to update, but directions='all' trains every "
            "singular value: set directions=top (SALT) or bottom with k, or residual_rank=0"
        )
    return value


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
        parametrization: ``direct`` trains s itself; ``exp`` trains s_delta with s = s0 * exp(s_delta);
            ``scale_shift`` trains a scale a (init 1) and a shift b (init 0) with s = relu(a * s0 + b).
        execution: ``auto`` (factorised only when an SVF tensor needs a gradient, else one merged op) or
            ``three_op`` (always V-op -> scale -> U-op, the SVF repo's form).
        svd_dtype: precision of the SVD, ``float64`` (exact to fp32 rounding) or ``float32``; a
            ``torch.dtype`` is accepted.
        directions: which singular values train: ``all``, or the ``top`` / ``bottom`` ``k`` of each
            group (the others stay in the frozen ``s0`` buffer, so no optimizer can move them).
        k: with ``top`` / ``bottom``: an integer count or a fraction of each group's rank (see
            :func:`parse_k`); ``None`` with ``all``.
        residual_rank: rank r of a trained low-rank update B A (B zero at init) of the core restricted to
            the frozen directions' subspace (SALT with ``directions=top`` and ``scale_shift``); 0: none.
    """

    train: tuple[str, ...] = ("s",)
    parametrization: str = "direct"
    execution: str = "auto"
    svd_dtype: str = "float64"
    directions: str = "all"
    k: int | float | None = None
    residual_rank: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", normalise_train(self.train))
        check_choice("parametrization", self.parametrization, PARAMETRIZATIONS)
        check_choice("execution", self.execution, EXECUTIONS)
        object.__setattr__(self, "svd_dtype", _dtype_name(self.svd_dtype))
        check_choice("directions", self.directions, DIRECTIONS)
        object.__setattr__(self, "k", parse_k(self.k, self.directions))
        object.__setattr__(self, "residual_rank", _parse_residual_rank(self.residual_rank, self.directions))
        partial = self.directions != "all" or self.parametrization == "scale_shift"
        if partial and self.train not in (("s",), ()):
            raise ValueError(
                f"train={list(self.train)} is invalid with directions={self.directions!r}, "
                f"parametrization={self.parametrization!r}: these train (part of) the singular values "
                "only, so use train=['s'] (or directions=all with direct/exp to train U or V)"
            )

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
        """Plain values for logs and run records (lists, not tuples).

        The variant options (``directions``, ``k``, ``residual_rank``) appear only when one is set, so the
        records of plain SVF runs read as they did before these options existed.
        """
        out = {**asdict(self), "train": list(self.train)}
        if self.directions == "all" and self.residual_rank == 0:
            for key in ("directions", "k", "residual_rank"):
                out.pop(key)
        return out
