"""Per-sample gradient (and ghost-norm) samplers for layers Opacus leaves to its slow functorch fallback.

transformers' `Conv1D` (GPT-2's attention and MLP) is a Linear with a transposed weight; Llama-style
RMSNorm scales by a learned weight. Both get closed-form einsums here, registered into Opacus' registry
on import (engine.py imports this module). Tested against per-example loops in tests/test_dp_engine.py.
"""

from __future__ import annotations

import torch
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from transformers.pytorch_utils import Conv1D


@register_grad_sampler(Conv1D)
def conv1d_grad_sample(layer: Conv1D, activations: list[torch.Tensor], backprops: torch.Tensor):
    """y = x W + b with W of shape [in, out]: grad_W per sample = sum_t x_t^T g_t."""
    x = activations[0].to(backprops.dtype)
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...k->nk", backprops)
    return out


@register_norm_sampler(Conv1D)
def conv1d_norm_sample(layer: Conv1D, activations: list[torch.Tensor], backprops: torch.Tensor):
    """Per-sample gradient norms without materialising them (ghost clipping): ||sum_t x_t g_t^T||_F."""
    x = activations[0].to(backprops.dtype)
    out = {}
    if backprops.dim() == 2:
        if layer.weight.requires_grad:
            out[layer.weight] = torch.sqrt((x * x).sum(-1) * (backprops * backprops).sum(-1))
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = backprops.norm(dim=-1)
        return out
    gg = torch.einsum("nik,njk->nij", backprops, backprops)
    if layer.weight.requires_grad:
        xx = torch.einsum("nik,njk->nij", x, x)
        out[layer.weight] = torch.sqrt(torch.einsum("nij,nij->n", gg, xx).clamp(min=0))
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.sqrt(gg.sum(dim=(1, 2)).clamp(min=0))
    return out


def rms_norm_classes() -> list[type]:
    """transformers' RMSNorm classes computing w * x / rms(x) (Llama, Qwen2, Mistral) that are importable."""
    classes = []
    for module, name in (
        ("transformers.models.llama.modeling_llama", "LlamaRMSNorm"),
        ("transformers.models.qwen2.modeling_qwen2", "Qwen2RMSNorm"),
        ("transformers.models.mistral.modeling_mistral", "MistralRMSNorm"),
    ):
        try:
            classes.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return classes


def rmsnorm_grad_sample(layer, activations: list[torch.Tensor], backprops: torch.Tensor):
    """y = w * x / rms(x): grad_w per sample = sum_t g_t * x_t / rms(x_t) (computed in float32 like the layer)."""
    x = activations[0].float()
    normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + layer.variance_epsilon)).to(backprops.dtype)
    if not layer.weight.requires_grad:
        return {}
    return {layer.weight: torch.einsum("n...k,n...k->nk", backprops, normed)}


for _cls in rms_norm_classes():
    register_grad_sampler(_cls)(rmsnorm_grad_sample)
