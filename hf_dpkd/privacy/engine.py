"""Attach Opacus to a Hugging Face model and run the DP-SGD step over physical micro-batches.

Opacus computes per-sample gradients (``hooks``) or per-sample gradient norms (``ghost``); this module
turns a logical batch processed as several micro-batches into ONE DP-SGD update:

    summed = sum_i clip_C(g_i)   over every micro-batch of the logical batch (all ranks)
    grad   = (summed + N(0, (sigma*C)^2)) / expected_batch_size      (noise drawn once, on rank 0)

The hooks stay on the caller's model (no ``_module.`` wrapper in saved checkpoints).

Clipping modes (`CLIPPING_MODES`):
- ``hooks``: Opacus per-sample gradients; the clipped examples are added one by one in float32, so the
  update is bit-identical for any micro-batch size.
- ``ghost``: per-sample norms, then a second backward of ``sum_i c_i loss_i`` (Opacus; the package's own
  engine in bookkeeping.py when parameters are tied, which Opacus refuses).
- ``bookkeeping``: one backward; norms and clipped sums from stored activations and output gradients
  (bookkeeping.py). Equal to the per-example reference up to float32 rounding; the sum over micro-batches
  is not bit-identical across micro-batch sizes (matrix products change their summation order).
- ``auto``: ``bookkeeping`` when every trainable layer has a closed form there, else ``hooks``.

Every mode sees a parameter only through the forward of a module that owns it (Opacus' and the package's
hooks are per module). A trainable weight used anywhere else, e.g. a functional ``F.linear(h, emb.weight)``,
would have its gradient dropped (``hooks``, ``bookkeeping``) or added unclipped (``ghost``); the first
training forward of the wrapped model is therefore probed once (parameter_use.py) and such a model is
refused before its first backward. Per-sample norms, clipping factors and clipped sums are float32 (or
the parameters' dtype if wider), also for bf16 weights; the update is cast to the parameters' dtype only
after the noise is added.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.distributed as dist
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers.optimizer import DPOptimizer
from torch import nn

import hf_dpkd.privacy.grad_samplers  # noqa: F401  (registers Conv1D / RMSNorm samplers)
from hf_dpkd.privacy.bookkeeping import (
    FastClippingModule,
    accumulation_dtype,
    unsupported_layers,
    uses_activation_checkpointing,
)
from hf_dpkd.privacy.parameter_use import ParameterUseProbe, low_precision_ghost
from hf_dpkd.privacy.units import UnitLayout

ClippingMode = Literal["hooks", "ghost", "bookkeeping", "auto"]
CLIPPING_MODES: tuple[str, ...] = get_args(ClippingMode)

# Opacus' full backward hooks fire on embedding layers whose inputs are integer ids; harmless.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


def _tied_parameter_names(model: nn.Module) -> list[str]:
    """Names of trainable parameters that more than one module uses (e.g. GPT-2's wte / lm_head)."""
    owners: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return [names[0] for names in owners.values() if len(names) > 1]


def resolve_clipping_mode(model: nn.Module, clipping_mode: str) -> str:
    """The concrete mode `clipping_mode` runs as: 'auto' becomes 'bookkeeping' (one backward, fastest on
    the supported layers) when every trainable layer has a closed form, else 'hooks'."""
    if clipping_mode not in CLIPPING_MODES:
        raise ValueError(f"clipping_mode={clipping_mode!r} is not supported; use one of {CLIPPING_MODES}.")
    if clipping_mode != "auto":
        return clipping_mode
    if unsupported_layers(model) or uses_activation_checkpointing(model):
        return "hooks"
    return "bookkeeping"


def attach_grad_sampler(
    model: nn.Module, clipping_mode: str, max_grad_norm: float, *, per_unit: bool = False
) -> nn.Module:
    """Install per-sample hooks on `model` (see CLIPPING_MODES); returns the wrapper (not to be saved).

    `per_unit` (user-level DP): the clipped quantity will be the sum of several rows' gradients. ``ghost``
    then runs on this package's engine (Opacus' ghost norms are per row and cannot add a user's cross
    terms), which needs every trainable layer to have a closed form there."""
    mode = resolve_clipping_mode(model, clipping_mode)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("The model has no trainable parameter: nothing for DP-SGD to train.")
    errors = GradSampleModule.validate(model, strict=False)
    if errors:
        raise ValueError(
            "The model has trainable layers Opacus cannot compute per-sample gradients for "
            f"(layers with buffers such as BatchNorm mix samples): {errors[0]}. Replace them (e.g. "
            "opacus.validators.ModuleValidator.fix(model) swaps BatchNorm for GroupNorm) or freeze them."
        )
    if mode == "ghost":
        low = [
            (n, p.dtype)
            for n, p in model.named_parameters()
            if p.requires_grad and p.dtype != accumulation_dtype(p.dtype)
        ]
        if low:
            raise ValueError(
                low_precision_ghost(
                    repr(clipping_mode), f"the trainable parameter {low[0][0]!r} is {low[0][1]}"
                )
            )
    if per_unit and mode == "ghost" and unsupported_layers(model):
        raise ValueError(
            f"clipping_mode={clipping_mode!r} with a privacy unit column (user-level DP) needs the norm of each "
            "user's SUMMED gradient, which ghost clipping computes only for the layers of bookkeeping.py; "
            f"{unsupported_layers(model)[0]} is not one of them. Use clipping_mode='hooks' (any layer)."
        )
    if mode == "bookkeeping" or (mode == "ghost" and (per_unit or _tied_parameter_names(model))):
        # Opacus' ghost clipping refuses tied parameters; this engine computes their norm exactly.
        wrapper = FastClippingModule(model, max_grad_norm, mode=mode)
    elif mode == "ghost":
        wrapper = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="sum",
            max_grad_norm=max_grad_norm,
            use_ghost_clipping=True,
        )
    else:
        wrapper = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    # Set through __dict__: Opacus' wrappers forward unknown attribute reads to the model.
    wrapper.__dict__["_parameter_use_probe"] = ParameterUseProbe(model, mode, clipping_mode)
    return wrapper


def detach_grad_sampler(grad_sample_module: nn.Module) -> None:
    """Remove Opacus' hooks and per-sample buffers from the wrapped model."""
    probe = grad_sample_module.__dict__.pop("_parameter_use_probe", None)
    if probe is not None:
        probe.remove()
    grad_sample_module.remove_hooks()
    for p in grad_sample_module._module.parameters():
        for attr in (
            "grad_sample",
            "_current_grad_sample",
            "summed_grad",
            "_norm_sample",
            "_forward_counter",
        ):
            if hasattr(p, attr):
                delattr(p, attr)


#: elements of N(0, std^2) drawn per call into a small reused buffer (a multiple of 16, see below)
NOISE_CHUNK = 1 << 16


def _add_gaussian_noise_(
    out: torch.Tensor, std: float, generator: torch.Generator | None, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """out += N(0, std^2 I), the same numbers as ``torch.normal(0, std, out.shape, generator=generator)``
    (Opacus' non-secure `_generate_noise`), without a parameter-sized noise tensor: each chunk is drawn into
    a small buffer that stays in cache for the add, and no fresh pages are faulted in per step.

    Same stream: torch's CPU normal kernel fills a tensor of >= 16 elements with uniforms in order, turns each
    block of 16 into normals (Box-Muller) and redraws the last 16 when the size is not a multiple of 16; chunks
    that are multiples of 16, the remainder merged into the last one, consume and transform the same uniforms
    (tested against torch.normal and Opacus' draw). Returns the buffer for the next parameter."""
    flat = out.view(-1)
    n = flat.numel()
    if n <= 2 * NOISE_CHUNK or out.device.type != "cpu":
        flat.add_(torch.normal(0.0, std, size=(n,), generator=generator, device=out.device, dtype=out.dtype))
        return scratch
    if scratch is None or scratch.dtype != out.dtype:
        scratch = torch.empty(2 * NOISE_CHUNK, dtype=out.dtype)
    start = 0
    while start < n:
        size = NOISE_CHUNK if n - start >= 2 * NOISE_CHUNK else n - start  # last chunk: 1 to 2 chunks long
        noise = scratch[:size].normal_(0.0, std, generator=generator)
        flat[start : start + size].add_(noise)
        start += size
    return scratch


class DPSGDOptimizer(DPOptimizer):
    """Opacus' DPOptimizer driven one micro-batch at a time, with one noise draw per logical batch.

    Call :meth:`backward_microbatch` for every micro-batch of the logical batch (also with zero samples
    on some micro-batches or ranks), then :meth:`step` once. `expected_batch_size` is the GLOBAL expected
    logical batch size q*N; under torch.distributed the clipped sums are all-reduced and noise is drawn
    on rank 0 only, so the update equals the single-process one.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        grad_sample_module: nn.Module,
        clipping_mode: str = "hooks",
        generator: torch.Generator | None = None,
        on_step: Callable[[], None] | None = None,
    ):
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=int(round(expected_batch_size)),
            loss_reduction="sum",
            generator=generator,
        )
        self.expected_batch_size_exact = float(expected_batch_size)
        self.grad_sample_module = grad_sample_module
        self.clipping_mode = clipping_mode
        self.on_step = on_step
        self.num_samples_in_step = 0
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    # -- micro-batch ----------------------------------------------------------------------------
    def backward_microbatch(self, per_sample_losses: torch.Tensor, units: UnitLayout | None = None) -> None:
        """Backward the micro-batch's per-sample losses and add its clipped per-sample gradients.

        `units` (user-level DP): rows of the same unit are clipped together, as ONE summed gradient; a
        unit's rows must all be in this micro-batch."""
        n = per_sample_losses.shape[0]
        if n == 0:
            return
        if units is not None and units.num_rows != n:
            raise ValueError(f"units cover {units.num_rows} rows but there are {n} per-sample losses.")
        if isinstance(self.grad_sample_module, FastClippingModule):
            for p, g in self.grad_sample_module.clipped_sum(per_sample_losses, units).items():
                self._accumulate(p, g.detach())
        elif isinstance(self.grad_sample_module, GradSampleModuleFastGradientClipping):
            if units is not None and not units.one_row_each:
                raise ValueError(
                    "Opacus' ghost clipping clips rows one by one; user-level clipping needs "
                    "attach_grad_sampler(..., per_unit=True), which runs ghost on this package's engine."
                )
            gsm = self.grad_sample_module
            per_sample_losses.sum().backward(retain_graph=True)  # hooks compute per-sample norms only
            coef = gsm.get_clipping_coef().to(per_sample_losses.device).detach()
            self._drop_grads()
            gsm.disable_hooks()
            try:
                (coef * per_sample_losses).sum().backward()  # gradient of the clipped sum, directly
            finally:
                gsm.enable_hooks()
            for p in self.params:
                if p.grad is not None:
                    self._accumulate(p, p.grad.detach().clone())
            self._drop_grads()
        else:
            per_sample_losses.sum().backward()
            self._clip_and_accumulate_exact(n, units)
            self._drop_grads()
        self.num_samples_in_step += n if units is None else units.num_units

    @staticmethod
    def _accumulate(p: torch.Tensor, contribution: torch.Tensor) -> None:
        contribution = contribution.to(accumulation_dtype(p.dtype))  # float32 sums for bf16 weights
        summed = getattr(p, "summed_grad", None)
        p.summed_grad = contribution if summed is None else summed + contribution

    def _clip_and_accumulate_exact(self, n: int, units: UnitLayout | None = None) -> None:
        """Opacus' per-sample clipping, with the clipped gradients added one example at a time, in order.

        Adding the examples sequentially makes the float32 sum independent of how the logical batch was
        cut into micro-batches: given the same per-sample gradients, the sum is bit-for-bit the same for any
        max_physical_batch_size (the gradients themselves may round differently with the batch shape).
        Norms, factors and sums are float32 (or wider) whatever the per-sample gradients' dtype (bf16
        weights): the per-sample gradients are read as they are, only the accumulation is widened.
        With `units`, each unit's rows are summed first (in the accumulation dtype) and the units clipped.
        """
        grads, acc = [], []
        for p in self.params:
            g = getattr(p, "grad_sample", None)
            if g is None:  # a parameter this micro-batch did not touch: zero per-sample gradients
                g = torch.zeros((n, *p.shape), device=p.device, dtype=p.dtype)
            elif isinstance(g, list):
                g = torch.cat(g, dim=0)
            dtype = accumulation_dtype(torch.promote_types(g.dtype, p.dtype))
            if units is not None and not units.one_row_each:
                g = units.sum_rows(g.to(dtype))
            grads.append(g)
            acc.append(dtype)
        if units is not None:
            n = units.num_units
        norm_dtype = functools.reduce(torch.promote_types, acc, torch.float32)
        norms = torch.stack(
            [torch.linalg.vector_norm(g.reshape(n, -1), dim=-1, dtype=norm_dtype) for g in grads], dim=1
        ).norm(2, dim=1)
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0).tolist()
        sums = []
        for p, dtype in zip(self.params, acc):
            if getattr(p, "summed_grad", None) is None:
                p.summed_grad = torch.zeros_like(p, dtype=dtype)
            sums.append(p.summed_grad)
        for i, factor in enumerate(factors):  # (bf16 g[i] are widened inside the add, not rounded)
            torch._foreach_add_(sums, [g[i] for g in grads], alpha=factor)
        for p in self.params:
            p.grad_sample = None

    def _drop_grads(self) -> None:
        for p in self.params:
            p.grad = None

    # -- logical step ---------------------------------------------------------------------------
    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        scratch = None
        for p in self.params:
            summed = getattr(p, "summed_grad", None)
            if summed is None:  # empty logical batch on this rank: only noise
                summed = torch.zeros_like(p, dtype=accumulation_dtype(p.dtype))
            summed = summed.contiguous().view_as(p)  # fresh per step: the update is built in place on it
            noise_here = (not self.distributed) or dist.get_rank() == 0
            if noise_here and self.noise_multiplier > 0:
                scratch = _add_gaussian_noise_(
                    summed, self.noise_multiplier * self.max_grad_norm, self.generator, scratch
                )
            if self.distributed:
                dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            # Rounded to the parameters' dtype (bf16) only now, after the noise: post-processing.
            p.grad = summed.div_(self.expected_batch_size_exact).to(p.dtype)
            p.summed_grad = None
            p.grad_sample = None
        if self.on_step is not None:
            self.on_step()
        self.num_samples_in_step = 0
        return self.original_optimizer.step()

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad_sample = None
            p.summed_grad = None
        self.original_optimizer.zero_grad(set_to_none)
