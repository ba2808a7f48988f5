"""How close a result must be to a reference computed by different kernels, and why.

Two computations of the same quantity by different kernels (a batched backward against one example at a
time, Gram matrices against materialised per-sample gradients, float32 against a float64 reference, the
same matrix product cut into other shapes) agree only up to rounding, and where the rounding falls depends
on the CPU or GPU, its BLAS, its vector width and the thread count. So a reference comparison here states
two limits, both derived from the precision the kernels compute in, neither from the largest element alone:

- **relative norm**: ``||ours - ref|| / ||ref|| <= rtol``, over all tensors together and over every tensor
  on its own. In float32 ``rtol = 1e-5`` (84 eps). The suite's float32 comparisons measure at most 5e-7
  (4 eps) on every CPU variant tried (AVX-512, AVX2 and scalar ATen kernels, MKL in its AVX2, SSE4.2 and
  "compatible" modes, 1 or 2 threads), while the smallest real bugs the tests guard against (every
  per-sample norm 0.1 % off, one clip factor off by 1e-4, a dropped cross term, clipping each forward or
  micro-batch on its own) give 2e-5 to 1.
- **element-wise**: ``|ours - ref| <= k * eps * sqrt(terms) * scale`` per tensor, ``scale = max|ref|`` of the
  tensor. An element that sums ``terms`` float32 products of the tensor's magnitude is rounded by about
  ``eps * sqrt(terms) * scale`` however small the element itself is, so a near-zero element (a difference
  of large terms) is held to the rounding of those terms, not to 1e-7 of the largest element. ``terms`` is
  the number of products accumulated into one element (for a clipped sum: examples x positions x forwards).
  In float32 ``k = 16``; measured at most 0.9.

bf16 autocast rounds every matrix product's inputs to bf16 (eps = 2**-7) and accumulates in float32, so
its error does not grow with ``terms``: ``rtol = 2e-2`` (measured at most 3.8e-3) and ``k = 1`` (measured
at most 0.11). It resolves bugs of about 2 % and more; the float32 tests resolve 1e-5.

Where the result is a difference of much larger terms (a variance ``E[x^2] - E[x]^2``), pass their
magnitude as ``scale``: both limits are then relative to it. The measured figures, and the error of a
deliberately broken variant, are in the docstrings of the tests; docs/architecture.md ("Tests") has the rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

#: dtype the kernels compute in -> (relative-norm limit, element-wise limit in eps * sqrt(terms) * scale).
LIMITS = {torch.float32: (1e-5, 16.0), torch.bfloat16: (2e-2, 1.0)}


def _as_dict(x) -> dict:
    return dict(x) if isinstance(x, Mapping) else {"": x}


def reference_errors(
    ours, ref, *, terms: int, dtype: torch.dtype = torch.float32, scale: float | None = None
) -> dict:
    """The errors `assert_matches_reference` bounds, next to their limits.

    ``global``: relative norm error over all tensors; ``tensor``: the worst tensor's (named in
    ``tensor_name``); ``element``: the worst element in units of eps * sqrt(terms) * scale (``element_name``);
    ``rtol`` and ``element_limit``: the limits for `dtype`.
    """
    ours, ref = _as_dict(ours), _as_dict(ref)
    if ours.keys() != ref.keys():
        raise AssertionError(f"different tensors: {sorted(map(str, ours.keys() ^ ref.keys()))}")
    eps = torch.finfo(dtype).eps
    rtol, element_limit = LIMITS[dtype]

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else (0.0 if num == 0 else math.inf)

    diff2 = norm2 = 0.0
    e = {"tensor": 0.0, "tensor_name": "", "element": 0.0, "element_name": ""}
    for name, r in ref.items():
        o, r = ours[name].detach().double().cpu(), r.detach().double().cpu()
        if o.shape != r.shape:
            raise AssertionError(f"{name}: shape {tuple(o.shape)} vs reference {tuple(r.shape)}")
        d, r = (o - r).flatten(), r.flatten()
        if not torch.isfinite(d).all():
            d = torch.full_like(d, math.inf)
        size = max(r.abs().max().item(), scale or 0.0) if r.numel() else 0.0
        n2 = max(float(r @ r), (scale or 0.0) ** 2 * r.numel())
        d2 = float(d @ d)
        diff2, norm2 = diff2 + d2, norm2 + n2
        rel = math.sqrt(ratio(d2, n2))
        elem = ratio(d.abs().max().item() if d.numel() else 0.0, eps * math.sqrt(terms) * size)
        if rel >= e["tensor"]:
            e["tensor"], e["tensor_name"] = rel, name
        if elem >= e["element"]:
            e["element"], e["element_name"] = elem, name
    return {"global": math.sqrt(ratio(diff2, norm2)), **e, "rtol": rtol, "element_limit": element_limit}


def assert_matches_reference(
    ours, ref, *, what: str, terms: int, dtype: torch.dtype = torch.float32, scale: float | None = None
) -> dict:
    """Assert `ours` equals `ref` (tensors or {name: tensor}) up to `dtype` rounding of sums of `terms` products.

    `what` names the comparison in the failure message; returns `reference_errors` (the measured errors).
    """
    e = reference_errors(ours, ref, terms=terms, dtype=dtype, scale=scale)
    rtol, k = e["rtol"], e["element_limit"]
    assert e["global"] <= rtol, f"{what}: relative error {e['global']:.3g} over all tensors > {rtol:.3g}"
    assert e["tensor"] <= rtol, (
        f"{what}: {e['tensor_name']} has relative error {e['tensor']:.3g} > {rtol:.3g}"
    )
    assert e["element"] <= k, (
        f"{what}: {e['element_name']} has an element off by {e['element']:.3g} x eps * sqrt({terms}) * scale "
        f"(limit {k:g})"
    )
    return e
