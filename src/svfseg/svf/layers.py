"""SVF layers: a Conv2d / Linear whose weight is held as U diag(s) V^T and run in the cheapest form.

Storage (G = groups, R_g = full rank of one group's folded matrix, R = G*R_g):

* ``u`` (C_out, R_g): per group a (C_out/G, R_g) block, i.e. the weight of a grouped 1x1 conv;
* ``s`` (R,) singular values (``direct``) or ``s_delta`` (R,) with s = s0 * exp(s_delta) (``exp``), or
  ``s_scale`` and ``s_shift`` (R,) with s = relu(s_scale * s0 + s_shift) (``scale_shift``);
* ``v`` (R, C_in/G * prod(kernel)): V^T per group, i.e. the weight of a grouped conv with the original kernel;
* buffer ``s0`` (R,): the singular values at conversion (``disable_svf`` and the ``exp`` form use it).

Direction selection (``directions=top|bottom``, ``k``): the trained tensors above hold only the k_g
selected values of each group (G*k_g elements); the other values are read from the ``s0`` buffer, which no
optimizer touches, so they stay bit-identical under weight decay and momentum. ``residual_rank`` r adds
``s_lora_b`` (G, R_g-k_g, r), zero at conversion, and ``s_lora_a`` (G, r, R_g-k_g): the core of the
frozen directions becomes diag(s0_rest) + B A, i.e. W += U_rest B A V_rest^T (SALT). Such a layer runs
V-op -> U-op with U's columns scaled and mixed by the core (one op more than ``fused.py`` avoids).

Execution (``execution`` attribute):

* ``auto``: when gradients are needed for one of this layer's SVF tensors the layer runs factorised
  (V-conv -> scale by s -> grouped 1x1 U-conv + bias), so frozen U and V never get weight gradients;
  with U and V frozen, convs use the fused Function of ``fused.py`` (s folded into the 1x1 weight,
  half the extra activation memory of the composed three ops);
  otherwise one conv with the merged weight, cached and rebuilt only when u/s/v changed (version
  counters), so eval costs what the original network costs.
* ``three_op``: always factorised as three autograd ops (the SVF repo's implementation).

A layer built with ``from_shapes=True`` holds zero factors of the right shapes and no fingerprint: the
structure a checkpoint's state dict loads into, with no SVD. It refuses to run until a state dict
(``load_state_dict``) has filled it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from svfseg.svf.decompose import Factors, decompose, placeholder_factors, weight_fingerprint
from svfseg.svf.errors import SVFStateError
from svfseg.svf.fused import FactorisedConv2d
from svfseg.svf.options import EXECUTIONS, SVFOptions, check_choice, normalise_train, resolve_k

LAYER_STATE_VERSION = 1


class _OptimizerSteps:
    """Counts optimizer steps process-wide (one global post-step hook, registered on first use).

    Fused optimizers (``fused=True``) update parameters without bumping their version counters, so the
    merged-weight cache of a layer with trainable tensors also keys on this count.
    """

    count = 0
    _handle: Any = None

    @classmethod
    def ensure_hook(cls) -> None:
        if cls._handle is None:
            cls._handle = register_optimizer_step_post_hook(cls._on_step)

    @classmethod
    def _on_step(cls, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        cls.count += 1


class SVFLayer(nn.Module, ABC):
    """Shared state and execution logic of :class:`SVFConv2d` and :class:`SVFLinear`."""

    kind: ClassVar[str]
    weight_shape: tuple[int, ...]
    bias: nn.Parameter | None
    s0: Tensor

    def __init__(
        self,
        factors: Factors,
        bias: Tensor | None,
        *,
        groups: int,
        options: SVFOptions,
        fingerprint: str,
    ) -> None:
        super().__init__()
        parametrization = options.parametrization
        self.parametrization = parametrization
        self.train_subspaces = options.train
        self.execution = options.execution
        self.groups = groups
        self.group_rank = factors.u.shape[1]
        self.rank = factors.s.numel()
        self.fingerprint = fingerprint  # "" until a state dict fills a layer built from shapes
        self.svd_dtype = options.svd_dtype
        self.directions = options.directions
        self.k = options.k
        self.group_k = resolve_k(options.k, self.group_rank)
        self.residual_rank = min(options.residual_rank, self.group_rank - self.group_k)
        train_s = "s" in self.train_subspaces
        self.u = nn.Parameter(factors.u, requires_grad="u" in self.train_subspaces)
        selected = self._split(factors.s.reshape(groups, -1))[0].reshape(-1)
        if parametrization == "direct":
            self.s = nn.Parameter(selected.clone(), requires_grad=train_s)
        elif parametrization == "exp":
            self.s_delta = nn.Parameter(torch.zeros_like(selected), requires_grad=train_s)
        else:
            self.s_scale = nn.Parameter(torch.ones_like(selected), requires_grad=train_s)
            self.s_shift = nn.Parameter(torch.zeros_like(selected), requires_grad=train_s)
        if self.residual_rank:
            g, m, r = groups, self.group_rank - self.group_k, self.residual_rank
            self.s_lora_b = nn.Parameter(factors.s.new_zeros(g, m, r), requires_grad=train_s)
            self.s_lora_a = nn.Parameter(
                _lora_a_init(factors.s, (g, r, m), fingerprint), requires_grad=train_s
            )
        self.v = nn.Parameter(factors.v, requires_grad="v" in self.train_subspaces)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            # Frozen like every non-singular-value weight in the SVF repo.
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("s0", factors.s.clone())
        self._disabled = False
        _OptimizerSteps.ensure_hook()
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None

    # ----------------------------------------------------------------- tensors
    def core_tensors(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters between U and V: ``s`` / ``s_delta`` / ``s_scale`` + ``s_shift``, then the
        residual ``s_lora_b`` + ``s_lora_a``; every name starts with ``s`` (``train=[s]`` selects them)."""
        names = {"direct": ("s",), "exp": ("s_delta",), "scale_shift": ("s_scale", "s_shift")}
        out = [(n, getattr(self, n)) for n in names[self.parametrization]]
        if self.residual_rank:
            out += [("s_lora_b", self.s_lora_b), ("s_lora_a", self.s_lora_a)]
        return out

    def svf_tensors(self) -> list[tuple[str, nn.Parameter]]:
        """The factor parameters: u, the core tensors (:meth:`core_tensors`), v."""
        return [("u", self.u), *self.core_tensors(), ("v", self.v)]

    @property
    def partial(self) -> bool:
        """True when only some singular values train (``directions`` top / bottom)."""
        return self.directions != "all"

    def _split(self, grouped: Tensor) -> tuple[Tensor, Tensor]:
        """A (G, R_g, ...) tensor split along dim 1 into the selected (G, k_g, ...) and the other rows."""
        cut = self.group_rank - self.group_k if self.directions == "bottom" else self.group_k
        head, tail = grouped[:, :cut], grouped[:, cut:]
        return (tail, head) if self.directions == "bottom" else (head, tail)

    def _join(self, selected: Tensor, other: Tensor, dim: int = 1) -> Tensor:
        """Inverse of :meth:`_split` along ``dim`` (per group), keeping the SVD order."""
        parts = (other, selected) if self.directions == "bottom" else (selected, other)
        return torch.cat(parts, dim=dim)

    def effective_s(self) -> Tensor:
        """Singular values used by the forward (the originals while ``disable_svf`` is active).

        The frozen directions of a ``top`` / ``bottom`` layer come from the ``s0`` buffer. A residual
        low-rank core (``residual_rank``) is not diagonal; it enters through :meth:`_scaled_u`.
        """
        if self._disabled:
            return self.s0
        if self.partial:
            s0, s0_other = self._split(self.s0.reshape(self.groups, self.group_rank))
            s0 = s0.reshape(-1)
        else:
            s0, s0_other = self.s0, None
        if self.parametrization == "direct":
            trained = self.s
        elif self.parametrization == "exp":
            trained = s0 * torch.exp(self.s_delta)
        else:
            trained = torch.relu(self.s_scale * s0 + self.s_shift)
        if s0_other is None:
            return trained
        return self._join(trained.reshape(self.groups, self.group_k), s0_other).reshape(-1)

    def _scaled_u(self, u: Tensor, s: Tensor, lora: tuple[Tensor, Tensor] | None) -> Tensor:
        """U diag(s) per group plus U_rest B A in the frozen directions' columns; shape of ``u``."""
        g, r = self.groups, self.group_rank
        scaled = u.reshape(g, -1, r) * s.reshape(g, 1, r)
        if lora is not None:
            b, a = lora
            u_rest = self._split(u.reshape(g, -1, r).transpose(1, 2))[1].transpose(1, 2)  # (G, C/G, m)
            delta = (u_rest @ b) @ a
            zeros = delta.new_zeros(g, delta.shape[1], self.group_k)
            scaled = scaled + self._join(zeros, delta, dim=2)
        return scaled.reshape(u.shape)

    def _lora(self) -> tuple[Tensor, Tensor] | None:
        return (self.s_lora_b, self.s_lora_a) if self.residual_rank and not self._disabled else None

    def _sources(self) -> list[Tensor]:
        if self._disabled:
            return [self.u, self.s0, self.v]
        return [self.u, self.s0, *(p for _, p in self.core_tensors()), self.v]

    def needs_grad(self) -> bool:
        """True when one of the tensors the forward reads requires a gradient."""
        return any(t.requires_grad for t in self._sources())

    def merged_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """W = U diag(s) V^T per group, in the original weight shape; keeps the autograd graph.

        ``dtype`` computes the product in another precision (``merge_svf`` uses float64) and casts back.
        Autocast is off here: under ``bf16-mixed`` the merged weight stays in the factors' precision
        (float32) and only the conv that consumes it is autocast, as for a plain Conv2d weight.
        """
        with torch.autocast(self.u.device.type, enabled=False):
            u, s, v, lora = self.u, self.effective_s(), self.v, self._lora()
            out_dtype = u.dtype
            if dtype is not None:
                u, s, v = u.to(dtype), s.to(dtype), v.to(dtype)
                lora = None if lora is None else (lora[0].to(dtype), lora[1].to(dtype))
            g, r = self.groups, self.group_rank
            w = self._scaled_u(u, s, lora).reshape(g, -1, r) @ v.reshape(g, r, -1)
            return w.reshape(self.weight_shape).to(out_dtype)

    def _cached_weight(self) -> Tensor:
        """Merged weight, rebuilt only when a source tensor changed.

        Change detection: version counter, storage, device and dtype of u / s / v, and the count of
        optimizer steps when one of them trains (fused optimizers skip version counters). Everything is
        read on the host, so a cached forward never waits for the GPU. Edits through ``.data`` bypass
        version counters: after editing u / s / v that way, call :meth:`clear_cache`.
        """
        sources = self._sources()
        if any(t.is_inference() for t in sources):
            # Inference tensors carry no version counter, so a cache could go stale unnoticed.
            with torch.no_grad():
                return self.merged_weight()
        # Frozen layers never see an optimizer update, so only trainable ones key on the step count.
        steps = _OptimizerSteps.count if any(t.requires_grad for t in sources) else -1
        key = (
            self._disabled,
            steps,
            *((id(t), t.data_ptr(), t._version, t.device, t.dtype) for t in sources),
        )
        cache = self._cache
        if cache is not None and cache[0] == key:
            return cache[1]
        # A normal (non-inference) tensor, so the cache also serves later grad-mode calls.
        with torch.inference_mode(False), torch.no_grad():
            weight = self.merged_weight()
            self._cache = (key, weight)
        return weight

    def clear_cache(self) -> None:
        """Drop the merged-weight cache (needed only after editing ``u``/``v`` through ``.data``)."""
        self._cache = None

    # ----------------------------------------------------------------- forward
    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        self._execution = check_choice("execution", value, EXECUTIONS)

    def forward(self, x: Tensor) -> Tensor:
        """Run factorised when SVF gradients are needed (or forced), else one dense op."""
        if not self.fingerprint:
            raise SVFStateError(
                f"{type(self).__name__}(rank={self.rank}) was built from shapes only (no SVD) and holds no "
                "weights yet: load the checkpoint's state dict into the model before running it"
            )
        if self.execution == "three_op" or (
            self.execution == "auto" and torch.is_grad_enabled() and self.needs_grad()
        ):
            if self._cache is not None:
                self._cache = None  # stale after the next optimizer step anyway; frees memory
            return self._forward_factorised(x, self.effective_s())
        return self._forward_dense(x, self._cached_weight())

    @abstractmethod
    def _forward_factorised(self, x: Tensor, s: Tensor) -> Tensor:
        """V-op -> channel scale by ``s`` -> U-op (+ bias)."""

    @abstractmethod
    def _forward_dense(self, x: Tensor, weight: Tensor) -> Tensor:
        """The original op with ``weight`` (and the bias)."""

    @abstractmethod
    def to_plain(self) -> nn.Module:
        """A plain Conv2d / Linear with the merged weight (see ``merge_svf``)."""

    def _fill_plain(self, plain: nn.Module) -> nn.Module:
        """Copy the merged weight (float64 product) and the bias into ``plain``, keeping trainability."""
        with torch.no_grad():
            plain.weight.copy_(self.merged_weight(torch.float64))
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        plain.weight.requires_grad_(self.needs_grad())
        if self.bias is not None:
            plain.bias.requires_grad_(self.bias.requires_grad)
        return plain

    # ----------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        """Conversion metadata; only str/int/list values so ``torch.load(weights_only=True)`` reads it."""
        return {
            "version": LAYER_STATE_VERSION,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "parametrization": self.parametrization,
            "train": list(self.train_subspaces),
            "groups": self.groups,
            "rank": self.rank,
            "svd_dtype": self.svd_dtype,
            **self.selection_meta(),
        }

    def selection_meta(self) -> dict[str, Any]:
        """Direction selection and residual rank; empty for a layer that trains every value, so such a
        layer writes exactly the metadata it wrote before these options existed."""
        if not self.partial and not self.residual_rank:
            return {}
        return {"directions": self.directions, "group_k": self.group_k, "residual_rank": self.residual_rank}

    def set_extra_state(self, state: Any) -> None:
        """Adopt the checkpoint's metadata; refuse a layer of another structure or parametrisation."""
        if not isinstance(state, dict) or state.get("version") != LAYER_STATE_VERSION:
            raise SVFStateError(
                f"SVF layer extra state {state!r} is not version {LAYER_STATE_VERSION} metadata; "
                "the checkpoint was written by another svfseg format"
            )
        # Absent for layers that train every singular value (and in checkpoints older than the option).
        older = {"directions": "all", "group_k": self.group_rank, "residual_rank": 0}
        for key in ("kind", "parametrization", "groups", "rank", *older):
            if state.get(key, older.get(key)) != getattr(self, key):
                raise SVFStateError(
                    f"SVF layer metadata mismatch for '{key}': checkpoint has {state.get(key)!r}, "
                    f"this layer has {getattr(self, key)!r}; convert the model with the same settings "
                    "before loading"
                )
        self.fingerprint = str(state["fingerprint"])
        self.train_subspaces = normalise_train(state["train"])
        self.svd_dtype = str(state["svd_dtype"])

    def _common_repr(self) -> str:
        selection = ""
        if self.partial:
            selection = f", directions={self.directions}, k={self.k!r} ({self.group_k} per group)"
        if self.residual_rank:
            selection += f", residual_rank={self.residual_rank}"
        return (
            f"rank={self.rank}, groups={self.groups}, parametrization={self.parametrization}, "
            f"train={list(self.train_subspaces)}, execution={self.execution}{selection}"
        )


def _lora_a_init(like: Tensor, shape: tuple[int, int, int], fingerprint: str) -> Tensor:
    """LoRA's A init, U(-1/sqrt(m), 1/sqrt(m)) with m the frozen directions per group (``kaiming_uniform_``
    with a=sqrt(5)), drawn from a generator seeded by the layer's fingerprint: every process and every
    run converting the same weights starts from the same A, whatever the global RNG did before."""
    if not fingerprint or like.device.type == "meta":
        return like.new_zeros(shape)  # built from shapes: a state dict fills it
    generator = torch.Generator().manual_seed(int(fingerprint[:15], 16))
    bound = 1.0 / math.sqrt(shape[2])
    a = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return a.to(device=like.device, dtype=like.dtype)


def _factors(weight: Tensor, groups: int, options: SVFOptions, from_shapes: bool) -> Factors:
    if from_shapes:
        return placeholder_factors(weight, groups)
    return decompose(weight, groups, options.torch_svd_dtype)


def _reversed_padding(
    padding: str | tuple[int, ...], kernel_size: tuple[int, ...], dilation: tuple[int, ...]
) -> list[int]:
    """F.pad amounts (last dim first) equivalent to ``padding``, as nn.Conv2d computes them."""
    out: list[int] = []
    for i in reversed(range(len(kernel_size))):
        if padding == "valid":
            out += [0, 0]
        elif padding == "same":
            total = dilation[i] * (kernel_size[i] - 1)
            out += [total // 2, total - total // 2]
        else:
            out += [int(padding[i]), int(padding[i])]
    return out


class SVFConv2d(SVFLayer):
    """A Conv2d as V-conv (original kernel, stride, padding, dilation, groups) -> s -> grouped 1x1 U-conv."""

    kind: ClassVar[str] = "conv2d"

    def __init__(
        self,
        factors: Factors,
        bias: Tensor | None,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: str | tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        padding_mode: str,
        options: SVFOptions,
        fingerprint: str,
    ) -> None:
        super().__init__(factors, bias, groups=groups, options=options, fingerprint=fingerprint)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.padding_mode = padding_mode
        self.weight_shape = (out_channels, in_channels // groups, *kernel_size)
        self._pad = _reversed_padding(padding, kernel_size, dilation)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        options: SVFOptions | None = None,
        *,
        from_shapes: bool = False,
        **fields: Any,
    ) -> SVFConv2d:
        """Decompose ``conv`` (one SVD per group) into an equivalent SVF layer on the same device/dtype.

        ``options`` / ``fields``: :class:`SVFOptions`. ``from_shapes``: no SVD, zero factors of the right
        shapes for a state dict to fill (see the module docstring).
        """
        opts = SVFOptions.of(options, **fields)
        weight = conv.weight
        return cls(
            _factors(weight, conv.groups, opts, from_shapes),
            conv.bias,
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=tuple(conv.kernel_size),  # type: ignore[arg-type]
            stride=tuple(conv.stride),  # type: ignore[arg-type]
            padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),  # type: ignore[arg-type]
            dilation=tuple(conv.dilation),  # type: ignore[arg-type]
            groups=conv.groups,
            padding_mode=conv.padding_mode,
            options=opts,
            fingerprint="" if from_shapes else weight_fingerprint(cls.kind, weight, conv.bias),
        )

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _forward_dense(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._conv(x, weight, self.bias)

    def _use_fused(self, x: Tensor) -> bool:
        """Fused autograd Function when only s (and bias) can train; the composed graph otherwise."""
        return self.execution != "three_op" and not (
            self.u.requires_grad or self.v.requires_grad or self._lora() is not None
        )

    def _forward_factorised(self, x: Tensor, s: Tensor) -> Tensor:
        v = self.v.reshape(self.rank, self.in_channels // self.groups, *self.kernel_size)
        u = self.u.reshape(self.out_channels, self.group_rank, 1, 1)
        lora = self._lora()
        if lora is not None:  # the core mixes the frozen directions: fold it into the U-conv's weight
            scaled = self._scaled_u(self.u, s, lora).reshape(u.shape)
            return F.conv2d(self._conv(x, v, None), scaled, self.bias, 1, 0, 1, self.groups)
        if self._use_fused(x):
            padding = self.padding
            if self.padding_mode != "zeros" or isinstance(padding, str):
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                x, padding = F.pad(x, self._pad, mode=mode), (0, 0)
            unbatched = x.dim() == 3
            bias = self.bias
            device = x.device.type
            autocast = torch.is_autocast_enabled(device)
            if autocast:  # the convs in the autocast dtype, s (and dL/ds) stays float32
                dtype = torch.get_autocast_dtype(device)
                x, v, u = x.to(dtype), v.to(dtype), u.to(dtype)
                bias = None if bias is None else bias.to(dtype)
            with torch.autocast(device, enabled=False):
                y = FactorisedConv2d.apply(
                    x.unsqueeze(0) if unbatched else x,
                    v,
                    s,
                    u,
                    bias,
                    self.stride,
                    padding,
                    self.dilation,
                    self.groups,
                )
            return y.squeeze(0) if unbatched else y
        h = self._conv(x, v, None) * s.reshape(-1, 1, 1)
        return F.conv2d(h, u, self.bias, 1, 0, 1, self.groups)

    def to_plain(self) -> nn.Conv2d:
        """An nn.Conv2d with W = U diag(s) V^T (computed in float64), same hyper-parameters and bias."""
        conv = torch.nn.utils.skip_init(
            nn.Conv2d,
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.u.device,
            dtype=self.u.dtype,
        )
        return self._fill_plain(conv)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, padding_mode={self.padding_mode}, "
            f"bias={self.bias is not None}, {self._common_repr()}"
        )


class SVFLinear(SVFLayer):
    """A Linear as linear(x, V^T) -> scale by s -> linear(., U) + bias."""

    kind: ClassVar[str] = "linear"

    def __init__(
        self,
        factors: Factors,
        bias: Tensor | None,
        *,
        in_features: int,
        out_features: int,
        options: SVFOptions,
        fingerprint: str,
    ) -> None:
        super().__init__(factors, bias, groups=1, options=options, fingerprint=fingerprint)
        self.in_features = in_features
        self.out_features = out_features
        self.weight_shape = (out_features, in_features)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        options: SVFOptions | None = None,
        *,
        from_shapes: bool = False,
        **fields: Any,
    ) -> SVFLinear:
        """Decompose ``linear`` into an equivalent SVF layer on the same device/dtype (see ``from_conv``)."""
        opts = SVFOptions.of(options, **fields)
        weight = linear.weight
        return cls(
            _factors(weight, 1, opts, from_shapes),
            linear.bias,
            in_features=linear.in_features,
            out_features=linear.out_features,
            options=opts,
            fingerprint="" if from_shapes else weight_fingerprint(cls.kind, weight, linear.bias),
        )

    def _forward_dense(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)

    def _forward_factorised(self, x: Tensor, s: Tensor) -> Tensor:
        lora = self._lora()
        if lora is not None:
            return F.linear(F.linear(x, self.v), self._scaled_u(self.u, s, lora), self.bias)
        return F.linear(F.linear(x, self.v) * s, self.u, self.bias)

    def to_plain(self) -> nn.Linear:
        """An nn.Linear with W = U diag(s) V^T (computed in float64) and the same bias."""
        return self._fill_plain(
            torch.nn.utils.skip_init(
                nn.Linear,
                self.in_features,
                self.out_features,
                bias=self.bias is not None,
                device=self.u.device,
                dtype=self.u.dtype,
            )
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self._common_repr()}"
        )
