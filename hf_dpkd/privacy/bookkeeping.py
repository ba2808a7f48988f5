"""Per-sample clipping from stored activations and output gradients (book-keeping and tied-weight ghost).

For the layers of causal LMs (Linear, transformers' Conv1D, Embedding, LayerNorm, RMSNorm) the per-sample
gradient of a weight is a sum of outer products, ``g_i = sum_t u_it v_it^T`` (u, v: the layer's input
activation and output gradient at position t). Two things follow (Bu et al., arXiv 2210.00038):

- its norm needs neither a second backward nor the per-sample gradient itself: either the "ghost" form
  ``||g_i||^2 = sum_{t,s} (u_t.u_s)(v_t.v_s)`` (cost about T^2 (r + c) / 2: the Gram matrices are symmetric)
  or the materialised ``g_i`` (cost T r c), whichever is cheaper for this layer and sequence length;
- the clipped sum ``sum_i c_i g_i`` is ONE matrix product of the stored tensors with the per-sample factors
  ``c_i = min(1, C / ||g_i||)`` folded in, which costs what the non-private weight gradient costs.

Where the per-sample gradients ``[n, r, c]`` take little more memory than the layer's stored input and output
gradient (long sequences, narrow layers: `_worth_keeping`), `bookkeeping` materialises them as soon as the
output gradient arrives and keeps them instead: the norm is their squares, the clipped sum their weighted sum,
and the Gram matrices are never formed (the per-sample product costs what the clipped sum's product would).

`mode="bookkeeping"` runs the forward with the trainable weights frozen (autograd then computes only the
activation gradients a backward needs anyway), one backward, then the norms and the clipped sums.
`mode="ghost"` is the two-backward variant (norms, then the gradient of ``sum_i c_i loss_i``); it keeps an
output gradient only while a tied parameter still needs it, so it holds less memory at once.

A parameter used by several layers (GPT-2 ties ``lm_head`` to ``wte``) has ONE per-sample gradient, the sum
of the layers' contributions; its squared norm is ``sum_k ||g_k||^2 + 2 sum_{k<l} <g_k, g_l>`` and the cross
terms are computed exactly (embedding rows gathered out of the lm_head's output gradient), never a sum of
norms. Tested against a per-example loop in tests/test_fast_clipping.py and tests/test_dp_engine.py.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_dpkd.privacy.grad_samplers import rms_norm_classes
from hf_dpkd.privacy.units import UnitLayout

FAST_MODES = ("bookkeeping", "ghost")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype per-sample norms and clipped sums are kept in: float32, or `dtype` if it is wider (bf16
    weights still get float32 norms, clipping factors and sums; rounding them to bf16 could exceed C)."""
    return torch.promote_types(dtype, torch.float32)


def _layer_kinds() -> dict[type, str]:
    kinds: dict[type, str] = {
        nn.Linear: "linear",
        Conv1D: "conv1d",
        nn.Embedding: "embedding",
        nn.LayerNorm: "layernorm",
        nn.RMSNorm: "torch_rmsnorm",
    }
    for cls in rms_norm_classes():
        kinds[cls] = "hf_rmsnorm"
    return kinds


LAYER_KINDS = _layer_kinds()


def unsupported_layers(model: nn.Module) -> list[str]:
    """Modules with trainable parameters this engine has no closed form for ('name (Type)'); [] if none."""
    bad = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        kind = LAYER_KINDS.get(type(module))
        if kind is None or (kind == "embedding" and module.max_norm is not None):
            bad.append(f"{name or '<root>'} ({type(module).__name__})")
    return bad


def uses_activation_checkpointing(model: nn.Module) -> bool:
    """Whether a transformers model re-runs its forward in the backward (it would be captured twice)."""
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attr) or attr in getattr(model, "__dict__", {}):
            return bool(getattr(model, attr))
    return False


# -- one layer call's contributions ---------------------------------------------------------------
# A contribution to a parameter's per-sample gradient is one of
#   ("outer", U [n,T,r], V [n,T,c])        g_i = sum_t U_it V_it^T                (Linear, Conv1D)
#   ("embed", ids [n,T], V [n,T,d], rows)   g_i = sum_t onehot(ids_it) V_it^T     (Embedding)
#   ("dense", G [n, *shape])                g_i = G_i                             (norm layers, biases)


class _Call:
    """One forward call of a tracked layer: its input, and its output gradient once the backward ran."""

    __slots__ = ("module", "kind", "act", "grad", "deferred", "kept")

    def __init__(self, module: nn.Module, kind: str, act: torch.Tensor):
        self.module, self.kind, self.act = module, kind, act
        self.grad: torch.Tensor | None = None
        self.deferred = False
        #: (parameter, its per-sample gradients [n, numel]) once materialised in place of act and grad
        self.kept: list[tuple[nn.Parameter, torch.Tensor]] | None = None


def _normalised(module: nn.Module, kind: str, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The normalised input the norm layer's weight multiplies (recomputed, as the layer computes it)."""
    xf = x.float()
    if kind == "layernorm":
        return F.layer_norm(xf, module.normalized_shape, eps=module.eps).to(out_dtype)
    if kind == "hf_rmsnorm":
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        return normed.to(x.dtype).to(out_dtype)
    dims = tuple(range(-len(module.normalized_shape), 0))
    eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
    return (xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)).to(out_dtype)


def _contributions(call: _Call, n: int) -> list[tuple[nn.Parameter, tuple]]:
    """The call's per-sample gradient contributions, in float32, one per trainable parameter."""
    m, x, g = call.module, call.act, call.grad.float()
    out: list[tuple[nn.Parameter, tuple]] = []
    bias = getattr(m, "bias", None)
    if call.kind in ("linear", "conv1d"):
        d_out = g.shape[-1]
        g3 = g.reshape(n, -1, d_out)
        x3 = x.float().reshape(n, -1, x.shape[-1])
        if m.weight.requires_grad:
            out.append((m.weight, ("outer", g3, x3) if call.kind == "linear" else ("outer", x3, g3)))
        if bias is not None and bias.requires_grad:
            out.append((bias, ("dense", g3.sum(1))))
    elif call.kind == "embedding":
        ids = x.reshape(n, -1)
        v = g.reshape(n, ids.shape[1], -1)
        if m.padding_idx is not None:
            v = v * (ids != m.padding_idx).unsqueeze(-1)
        if m.weight.requires_grad:
            out.append((m.weight, ("embed", ids, v, m.num_embeddings)))
    else:
        numel = m.weight.numel()
        normed = _normalised(m, call.kind, x, torch.float32)
        if m.weight.requires_grad:
            out.append((m.weight, ("dense", (g * normed).reshape(n, -1, numel).sum(1))))
        if bias is not None and bias.requires_grad:
            out.append((bias, ("dense", g.reshape(n, -1, numel).sum(1))))
    return out


def _grouped(c: tuple, units: UnitLayout | None) -> tuple:
    """The contribution of each privacy UNIT (user) instead of each row: the same formulas then give the norm
    of a unit's summed gradient. Outer and embedding terms lay a unit's rows side by side along the time axis
    (zero rows where a unit has fewer); dense per-row gradients are summed per unit."""
    if units is None or units.one_row_each:
        return c
    if c[0] == "dense":
        return ("dense", units.sum_rows(c[1]))
    if c[0] == "outer":
        return ("outer", units.stack(c[1]), units.stack(c[2]))
    return ("embed", units.stack(c[1]), units.stack(c[2]), c[3])


def _materialise(c: tuple) -> torch.Tensor:
    """The per-sample gradients [n, ...] of one contribution (flattened to [n, -1])."""
    if c[0] == "dense":
        return c[1].reshape(c[1].shape[0], -1)
    if c[0] == "outer":
        u, v = c[1], c[2]
        return torch.bmm(u.transpose(1, 2), v).reshape(u.shape[0], -1)
    ids, v, rows = c[1], c[2], c[3]
    n, _, d = v.shape
    full = torch.zeros(n, rows, d, dtype=v.dtype, device=v.device)
    full.scatter_add_(1, ids.unsqueeze(-1).expand(-1, -1, d), v)
    return full.reshape(n, -1)


#: positions per block of the ghost norm's Gram matrices (only the upper block triangle is computed)
GRAM_BLOCK = 64


def _gram_cost(t: int) -> int:
    """Entries of the [T, T] Gram matrix `_symmetric_sum` computes: the upper block triangle, ~T (T + B) / 2."""
    return sum(min(GRAM_BLOCK, t - a0) * (t - a0) for a0 in range(0, t, GRAM_BLOCK))


def _symmetric_sum(pair_product, t: int) -> torch.Tensor:
    """sum_{s,t} P_i[s, t] of a symmetric per-sample [n, T, T] product, from its upper block triangle only.

    `pair_product(rows, cols)` returns P[:, rows, cols]. Row block a against columns a0..T holds the diagonal
    block once and every block right of it once; those count twice in the full sum: 2 * all - diagonal.
    Fewer multiplications than the full Gram matrices ((k + 1) / 2k of them for k blocks) in larger products."""
    total = None
    for a0 in range(0, t, GRAM_BLOCK):
        a1 = min(a0 + GRAM_BLOCK, t)
        prod = pair_product(slice(a0, a1), slice(a0, t))
        part = prod.sum((1, 2)) if a1 == t else 2 * prod.sum((1, 2)) - prod[:, :, : a1 - a0].sum((1, 2))
        total = part if total is None else total + part
    return total


#: a call's per-sample gradients are materialised and kept in place of its input and output gradient when
#: they take at most this many bytes more, or at most KEEP_SLACK more than what they replace
KEEP_EXTRA_BYTES = 8 << 20
KEEP_SLACK = 0.25


def _worth_keeping(call: _Call, contribs: list[tuple[nn.Parameter, tuple]]) -> bool:
    """Keep the call's per-sample gradients (n r c floats per weight) instead of its stored tensors (n T (r + c)
    values)? The norm is then their squares and the clipped sum their weighted sum: no Gram matrices, and the
    per-sample product costs what the clipped sum's one product would. Only where memory grows little."""
    kept = 0
    for _, c in contribs:
        if c[0] == "embed":
            return False
        kept += c[1].numel() if c[0] == "dense" else c[1].shape[0] * c[1].shape[2] * c[2].shape[2]
    held = call.act.numel() * call.act.element_size() + call.grad.numel() * call.grad.element_size()
    extra = kept * 4 - held  # contributions are float32
    return extra <= max(KEEP_EXTRA_BYTES, KEEP_SLACK * held)


def _self_norm2(c: tuple) -> torch.Tensor:
    """||g_i||^2 for one contribution: ghost (Gram matrices) or materialised, whichever costs less."""
    if c[0] == "dense":
        return c[1].reshape(c[1].shape[0], -1).pow(2).sum(1)
    if c[0] == "outer":
        u, v = c[1], c[2]
        t, r, cols = u.shape[1], u.shape[2], v.shape[2]
        if t == 1:
            return u.pow(2).sum((1, 2)) * v.pow(2).sum((1, 2))
        if _gram_cost(t) * (r + cols) <= t * r * cols:  # ghost: ~T^2 / 2 (r + c) < T r c
            return _symmetric_sum(
                lambda a, b: (
                    torch.bmm(u[:, a], u[:, b].transpose(1, 2)) * torch.bmm(v[:, a], v[:, b].transpose(1, 2))
                ),
                t,
            )
        return torch.bmm(u.transpose(1, 2), v).pow(2).sum((1, 2))
    ids, v = c[1], c[2]
    return _symmetric_sum(
        lambda a, b: torch.bmm(v[:, a], v[:, b].transpose(1, 2)) * (ids[:, a, None] == ids[:, None, b]),
        ids.shape[1],
    )


def _cross(a: tuple, b: tuple) -> torch.Tensor:
    """<g_a,i , g_b,i> for two contributions to the same parameter (exact, per sample)."""
    if a[0] == "dense" or b[0] == "dense":
        return (_materialise(a) * _materialise(b)).sum(1)
    if a[0] == "embed" and b[0] == "outer":
        a, b = b, a
    vv = torch.bmm(a[2], b[2].transpose(1, 2))  # [n, Ta, Tb]
    if a[0] == "outer" and b[0] == "outer":
        uu = torch.bmm(a[1], b[1].transpose(1, 2))
    elif a[0] == "outer":  # b is an embedding: u_a,t . onehot(id_s) = u_a,t[id_s]
        uu = torch.gather(a[1], 2, b[1].unsqueeze(1).expand(-1, a[1].shape[1], -1))
    else:
        uu = (a[1].unsqueeze(2) == b[1].unsqueeze(1)).to(vv.dtype)
    return (uu * vv).sum((1, 2))


def _outer_factors(c: tuple, coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B = sum_i coef_i u_i^T v_i for an "outer" contribution: the factors folded into the
    narrower side, the sum over examples and positions done by the one matrix product."""
    u, v = c[1], c[2]
    r, cols = u.shape[2], v.shape[2]
    if r <= cols:
        u = u * coef.view(-1, 1, 1)
    else:
        v = v * coef.view(-1, 1, 1)
    return u.reshape(-1, r).t(), v.reshape(-1, cols)


def _clipped(c: tuple, coef: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """sum_i coef_i g_i for one contribution, with the factors folded into one matrix product."""
    if c[0] == "dense":
        return torch.einsum("n,nk->k", coef, c[1].reshape(c[1].shape[0], -1)).reshape(shape)
    if c[0] == "outer":
        a, b = _outer_factors(c, coef)
        return (a @ b).reshape(shape)
    ids, v, rows = c[1], c[2], c[3]
    out = torch.zeros(rows, v.shape[2], dtype=v.dtype, device=v.device)
    out.index_add_(0, ids.reshape(-1), (v * coef.view(-1, 1, 1)).reshape(-1, v.shape[2]))
    return out.reshape(shape)


def _add_clipped_(acc: torch.Tensor, c: tuple, coef: torch.Tensor) -> None:
    """acc += sum_i coef_i g_i in place (no full-size temporary): an embedding's rows are index-added, a
    layer's product is accumulated by addmm_."""
    if c[0] == "embed":
        ids, v = c[1], c[2]
        d = v.shape[2]
        acc.view(-1, d).index_add_(0, ids.reshape(-1), (v * coef.view(-1, 1, 1)).reshape(-1, d))
    elif c[0] == "outer":
        a, b = _outer_factors(c, coef)
        acc.view(a.shape[0], b.shape[1]).addmm_(a, b)
    else:
        acc.add_(_clipped(c, coef, acc.shape))


class FastClippingModule(nn.Module):
    """Wraps a model; `clipped_sum(per_sample_losses)` returns {param: sum_i clip_C(g_i)} of one micro-batch.

    Call the wrapper like the model (it forwards every argument), then `clipped_sum` on the [B] per-sample
    losses of that forward. Outside training (no grad) it is a plain pass-through.
    """

    def __init__(self, model: nn.Module, max_grad_norm: float, mode: str = "bookkeeping"):
        super().__init__()
        if mode not in FAST_MODES:
            raise ValueError(f"mode={mode!r} is not supported; use one of {FAST_MODES}.")
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm} must be > 0 (the per-sample clip norm C).")
        bad = unsupported_layers(model)
        if bad:
            raise ValueError(
                f"clipping_mode={mode!r} has no per-sample formula for the trainable layer {bad[0]}; use "
                "clipping_mode='hooks' (any layer), or freeze that layer."
            )
        if uses_activation_checkpointing(model):
            raise ValueError(
                f"clipping_mode={mode!r} does not support gradient checkpointing (the re-run forward would be "
                "captured twice); call model.gradient_checkpointing_disable() or use clipping_mode='hooks'."
            )
        self._module = model
        self.mode = mode
        self.max_grad_norm = float(max_grad_norm)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.hooks_enabled = True
        self._calls: list[_Call] = []
        self._capture_grads = False
        self._norm2: torch.Tensor | None = None
        self._units: UnitLayout | None = None
        self._n, self._wrong_batch = 0, None
        self.last_per_sample_norms: torch.Tensor | None = None
        self._handles = [
            module.register_forward_hook(self._forward_hook)
            for module in model.modules()
            if type(module) in LAYER_KINDS and any(p.requires_grad for p in module.parameters(recurse=False))
        ]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["_module"], name)

    # -- capture ----------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if not (self.hooks_enabled and torch.is_grad_enabled()):
            return self._module(*args, **kwargs)
        # Calls accumulate until clipped_sum (a loss may run the model more than once per micro-batch).
        if self.mode != "bookkeeping":
            return self._module(*args, **kwargs)
        # Frozen weights: the backward then computes activation gradients only (no weight gradients).
        for p in self.params:
            p.requires_grad_(False)
        try:
            return self._module(*args, **kwargs)
        finally:
            for p in self.params:
                p.requires_grad_(True)

    def _forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if not (self.hooks_enabled and torch.is_grad_enabled()):
            return None
        if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            raise ValueError(
                f"{type(module).__name__} was called without a positional input tensor or did not return one "
                "tensor; per-sample clipping needs both. Use clipping_mode='hooks'."
            )
        call = _Call(module, LAYER_KINDS[type(module)], inputs[0].detach())
        self._calls.append(call)
        replaced = None
        if not output.requires_grad:  # e.g. an embedding with frozen weights: start the graph here
            replaced = output = output.detach().requires_grad_()
        output.register_hook(functools.partial(self._grad_hook, call))
        return replaced

    def _grad_hook(self, call: _Call, grad: torch.Tensor) -> None:
        if not self._capture_grads:
            return
        if call.act.shape[0] != self._n:
            self._wrong_batch = self._wrong_batch or call
            return
        if call.kept is not None:
            raise RuntimeError(
                f"{type(call.module).__name__}'s output gradient arrived twice in one backward."
            )
        call.grad = grad.detach() if call.grad is None else call.grad + grad.detach()
        if call.deferred:
            return
        n = call.act.shape[0]
        contribs = _contributions(call, n)
        one_row_each = self._units is None or self._units.one_row_each
        if self.mode == "bookkeeping" and one_row_each and _worth_keeping(call, contribs):
            # float32 per-sample gradients, also under bf16 autocast
            with torch.autocast(grad.device.type, enabled=False):
                call.kept = [(p, _materialise(c)) for p, c in contribs]
            for _, g in call.kept:
                self._norm2 = self._norm2 + torch.linalg.vector_norm(g, dim=1).square()
            call.act = call.grad = None  # the kept gradients replace them
            return
        for _, c in contribs:
            self._norm2 = self._norm2 + _self_norm2(_grouped(c, self._units))
        if self.mode == "ghost":  # nothing else needs this call: free its tensors now
            call.act = call.grad = None

    # -- clipping ---------------------------------------------------------------------------------
    @staticmethod
    def _prepare(calls: list[_Call], n: int) -> None:
        """Mark calls whose parameter has several contributions (their norm needs all of them)."""
        uses: dict[int, int] = {}
        for call in calls:
            for p in call.module.parameters(recurse=False):
                if p.requires_grad:
                    uses[id(p)] = uses.get(id(p), 0) + 1
        for call in calls:
            call.deferred = any(
                uses[id(p)] > 1 for p in call.module.parameters(recurse=False) if p.requires_grad
            )

    def _finish_norms(self, calls: list[_Call], n: int) -> torch.Tensor:
        """Add the squared norms of parameters with several contributions (self and cross terms)."""
        per_param: dict[int, list[tuple]] = {}
        for call in calls:
            if call.deferred and call.grad is not None:
                for p, c in _contributions(call, n):
                    per_param.setdefault(id(p), []).append(_grouped(c, self._units))
        norm2 = self._norm2
        for contribs in per_param.values():
            for k, a in enumerate(contribs):
                norm2 = norm2 + _self_norm2(a)
                for b in contribs[k + 1 :]:
                    norm2 = norm2 + 2 * _cross(a, b)
        return norm2.clamp(min=0).sqrt()

    def clipped_sum(
        self, per_sample_losses: torch.Tensor, units: UnitLayout | None = None
    ) -> dict[nn.Parameter, torch.Tensor]:
        """Backward the [B] losses of the forwards since the last call; return {parameter: sum_i min(1, C/||g_i||) g_i}.

        With `units` (user-level DP) the clipped quantity is each unit's summed gradient g_U = sum_{i in U} g_i:
        the result is sum_U min(1, C/||g_U||) g_U, and `last_per_sample_norms` holds the units' norms."""
        n = per_sample_losses.shape[0]
        if units is not None and units.num_rows != n:
            raise ValueError(f"units cover {units.num_rows} rows but there are {n} per-sample losses.")
        calls, self._calls = self._calls, []
        self._prepare(calls, n)
        self._units = units
        size = n if units is None else units.num_units
        self._norm2 = torch.zeros(size, dtype=torch.float32, device=per_sample_losses.device)
        self._n, self._wrong_batch = n, None
        self._capture_grads = True
        try:
            if self.mode == "bookkeeping":
                per_sample_losses.sum().backward()
            else:
                per_sample_losses.sum().backward(retain_graph=True)
                for p in self.params:
                    p.grad = None
        finally:
            self._capture_grads = False
        if self._wrong_batch is not None:
            bad, self._wrong_batch = self._wrong_batch, None
            raise ValueError(
                f"{type(bad.module).__name__} saw a batch of {bad.act.shape[0]} rows but there are {n} "
                "per-sample losses: every layer input needs the batch dimension first (e.g. pass "
                "position_ids of shape [B, T], not [1, T])."
            )
        norms = self._finish_norms(calls, n)
        self._norm2, self._units = None, None
        self.last_per_sample_norms = norms.detach()
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        if units is not None:
            coef = units.per_row(coef)  # every row of a unit scaled by the unit's factor
        if self.mode == "ghost":
            del calls
            (coef.to(per_sample_losses.dtype).detach() * per_sample_losses).sum().backward()
            out = {p: p.grad for p in self.params if p.grad is not None}
            for p in self.params:
                p.grad = None
            return out
        out: dict[nn.Parameter, torch.Tensor] = {}
        with torch.autocast(coef.device.type, enabled=False):
            for call in calls:  # kept per-sample gradients: sum_i coef_i g_i, one matrix-vector product each
                for p, g in call.kept or ():
                    if p in out:
                        out[p].view(-1).addmv_(g.t(), coef)
                    else:
                        out[p] = torch.mv(g.t(), coef).view(p.shape).to(accumulation_dtype(p.dtype))
                call.kept = None
        # (calls whose output the loss did not depend on have no grad); embedding calls last, so that a tied
        # parameter's rows are added into its lm_head sum in place instead of through a full-size zeros tensor.
        # Each call's activation and output gradient are released once summed, as a backward frees them.
        for call in sorted((c for c in calls if c.grad is not None), key=lambda c: c.kind == "embedding"):
            for p, c in _contributions(call, n):
                if p in out:
                    _add_clipped_(out[p], c, coef)
                else:
                    out[p] = _clipped(c, coef, p.shape).to(
                        accumulation_dtype(p.dtype)
                    )  # float32 for bf16 weights
            call.act = call.grad = None
        return out

    # -- Opacus-like housekeeping used by the engine ---------------------------------------------
    def disable_hooks(self) -> None:
        self.hooks_enabled = False

    def enable_hooks(self) -> None:
        self.hooks_enabled = True

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._calls = []
