"""The one-time check that DP-SGD's per-module hooks see every use of every trainable parameter.

Every clipping mode measures per-sample gradients through hooks on the module that owns a parameter; a use
outside such a module (a functional ``F.linear(h, emb.weight)`` in a parent's forward) would be dropped or
added unclipped. This probe watches the first training forward and refuses such a model before its first
backward. Separate from engine.py because it is a static property of the model, not of the DP-SGD step.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from hf_dpkd.privacy.bookkeeping import accumulation_dtype

# Ops that read a parameter without carrying its gradient anywhere (property reads returning non-tensors are
# skipped anyway: only ops returning a tensor count as a use).
_NOT_A_USE = {
    torch.Tensor.detach,
    torch.Tensor.detach_,
    torch.Tensor.requires_grad_,
    torch.Tensor.data.__get__,
    torch.Tensor.grad.__get__,
}


class _UseRecorder(TorchFunctionMode):
    def __init__(self, probe: ParameterUseProbe):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.probe.record(func, args, kwargs, out)
        return out


class ParameterUseProbe:
    """One-time check that every trainable parameter is used only inside the forward of a module owning it.

    The per-sample hooks of every clipping mode sit on modules: a parameter used by an op while no module
    that directly owns it is running (a functional ``F.linear(h, emb.weight)`` in a parent's forward) gets
    gradient no hook measured. During the first grad-enabled forward of `model`, a TorchFunctionMode sees
    every op and module pre/post hooks keep the set of running modules; the hooks are removed after a clean
    forward (no per-step cost), and stay (refusing every forward) if a bad use was found. A module that ties
    the SAME Parameter (GPT-2's lm_head is an nn.Linear whose weight is wte's) owns it too, which is fine.
    For ``ghost`` it also refuses a forward under bf16/fp16 autocast (see `low_precision_ghost`).
    """

    def __init__(self, model: nn.Module, mode: str, requested_mode: str):
        self.model, self.mode = model, mode
        self.label = repr(requested_mode) + ("" if mode == requested_mode else f" (runs as {mode!r})")
        self.names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        self.device_type = next(p for p in model.parameters() if p.requires_grad).device.type
        self.module_names = {id(m): f"{n or '<root>'} ({type(m).__name__})" for n, m in model.named_modules()}
        self.owned = {
            id(m): [id(p) for p in m.parameters(recurse=False) if id(p) in self.names]
            for m in model.modules()
        }
        self.running: Counter[int] = Counter()  # parameter id -> running modules that own it
        self.stack: list[nn.Module] = []
        self.recorder: _UseRecorder | None = None
        self.found: str | None = None
        self.handles = []
        for module in model.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._exit, always_call=True))

    def _enter(self, module: nn.Module, _inputs) -> None:
        if self.recorder is None:
            if module is not self.model or not torch.is_grad_enabled():
                return
            if self.found is not None:  # refused once: refuse again before anything runs
                raise ValueError(self.found)
            self.recorder = _UseRecorder(self)
            self.recorder.__enter__()
        self.stack.append(module)
        self.running.update(self.owned[id(module)])

    def _exit(self, module: nn.Module, _inputs, output) -> None:
        if self.recorder is None or not self.stack or self.stack[-1] is not module:
            return
        self.stack.pop()
        self.running.subtract(self.owned[id(module)])
        if module is not self.model:
            return
        self.recorder.__exit__(None, None, None)
        self.recorder = None
        self.stack, self.running = [], Counter()
        if self.found is not None:
            raise ValueError(self.found)
        if output is not None:  # a clean, complete forward: nothing left to check
            self.remove()

    def record(self, func, args, kwargs, out) -> None:
        """Called by the TorchFunctionMode after every op of the probed forward."""
        if self.found is not None or not torch.is_grad_enabled():
            return
        if self.mode == "ghost" and torch.is_autocast_enabled(self.device_type):
            dtype = torch.get_autocast_dtype(self.device_type)
            if accumulation_dtype(dtype) != dtype:
                self.found = low_precision_ghost(self.label, f"{dtype} autocast is on")
                return
        if func in _NOT_A_USE or not any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0]):
            return  # .detach(), and reads of shape, dtype, device, ...
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and id(t) in self.names and self.running[id(t)] == 0:
                where = self.module_names.get(id(self.stack[-1]), "?") if self.stack else "?"
                op = getattr(func, "__name__", repr(func))
                if op == "__get__":  # a property such as .T
                    op = getattr(getattr(func, "__self__", None), "__name__", op)
                effect = (
                    "added to the update without being clipped"
                    if self.mode == "ghost"
                    else "silently left out of the update"
                )
                self.found = (
                    f"clipping_mode={self.label}: the trainable parameter {self.names[id(t)]!r} is used by "
                    f"`{op}` in the forward of {where}, a module that does not own it, so no per-sample hook "
                    f"sees that use and its gradient would be {effect}. No clipping mode supports such a use: "
                    "call the weight through a module that owns it (e.g. an nn.Linear whose .weight is that "
                    "same Parameter, the way transformers ties lm_head to the input embedding), or freeze it "
                    "(requires_grad=False)."
                )
                return

    def remove(self) -> None:
        if self.recorder is not None:
            self.recorder.__exit__(None, None, None)
            self.recorder = None
        for h in self.handles:
            h.remove()
        self.handles = []


def low_precision_ghost(label: str, why: str) -> str:
    return (
        f"clipping_mode={label} computes the clipped sum with a second backward, which runs in low precision "
        f"here ({why}): its rounding moves an example's contribution off the norm its clipping factor was "
        "computed for, above the clip norm C by up to about 1%. Use clipping_mode='bookkeeping' (one backward, "
        "norms and clipped sums in float32, least memory) or 'hooks', or train in float32."
    )
