"""Perplexity in the DistilDP paper's protocol.

The test texts are joined with ``"\\n\\n"``, tokenized once, and cut into NON-overlapping windows of
`window` tokens (the trailing tokens that do not fill a window are dropped, as the paper's
``group_texts`` preprocessing does). Each window is scored on its own (no context carried over), so the
first token of a window is not predicted: a window of W tokens contributes W - 1 predictions.

- ``perplexity`` = exp(mean over windows of the window's mean next-token NLL) -- the paper's number.
- ``token_weighted_perplexity`` = exp(total NLL / total predicted tokens).

With full windows only, every window has W - 1 predictions and the two are equal (up to rounding);
with ``keep_remainder=True`` the last, shorter window is scored too and they differ.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def perplexity(
    model,
    tokenizer,
    texts: list[str],
    *,
    window: int = 128,
    batch_size: int = 16,
    separator: str = "\n\n",
    keep_remainder: bool = False,
    show_progress: bool = True,
) -> dict[str, float]:
    """Paper-protocol and token-weighted perplexity of causal LM `model` on `texts`.

    Returns ``{"perplexity", "token_weighted_perplexity", "num_windows", "num_tokens"}`` where
    num_tokens counts the predicted tokens. Runs batched under ``torch.inference_mode`` and restores the
    model's train/eval mode.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: nothing to evaluate (pass the test split's texts).")
    if window < 2:
        raise ValueError(f"window={window} must be >= 2 tokens (one to condition on, one to predict).")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    limit = _max_positions(model)
    if limit is not None and window > limit:
        raise ValueError(f"window={window} exceeds the model's {limit} positions; pass window <= {limit}.")
    ids = tokenizer(separator.join(texts), return_attention_mask=False, verbose=False)["input_ids"]
    n_full = len(ids) // window
    windows = [ids[i * window : (i + 1) * window] for i in range(n_full)]
    rest = ids[n_full * window :]
    if keep_remainder and len(rest) >= 2:
        windows.append(rest)
    if not windows:
        raise ValueError(
            f"The joined texts have {len(ids)} tokens, fewer than one window of {window}; pass a smaller "
            "window or more texts."
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    window_means: list[float] = []
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.inference_mode():
            for start in tqdm(
                range(0, len(windows), batch_size), desc="perplexity", disable=not show_progress
            ):
                chunk = windows[start : start + batch_size]
                # Full windows and the (at most one) short remainder are never batched together.
                for group in (
                    [w for w in chunk if len(w) == window],
                    [w for w in chunk if len(w) != window],
                ):
                    if not group:
                        continue
                    batch = torch.tensor(group, device=device)
                    logits = model(input_ids=batch).logits[:, :-1].float()
                    nll = F.cross_entropy(
                        logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="none"
                    )
                    nll = nll.view(batch.size(0), -1).double()
                    window_means.extend(nll.mean(dim=1).tolist())
                    total_nll += nll.sum().item()
                    total_tokens += nll.numel()
    finally:
        model.train(was_training)
    return {
        "perplexity": math.exp(sum(window_means) / len(window_means)),
        "token_weighted_perplexity": math.exp(total_nll / total_tokens),
        "num_windows": len(windows),
        "num_tokens": total_tokens,
    }


def perplexity_metric_path() -> str:
    """Path of the ``evaluate`` metric module shipped with the package.

    ``evaluate.load(perplexity_metric_path())`` works offline, whereas ``evaluate.load("perplexity")``
    fetches a script from the Hub (and uses a different, per-text protocol).
    """
    return str(Path(__file__).parent / "metrics" / "perplexity" / "perplexity.py")
