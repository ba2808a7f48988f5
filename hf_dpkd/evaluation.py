"""Perplexity in the DistilDP paper's protocol.

Test texts are joined with "\\n\\n", tokenized once, and cut into non-overlapping windows of `window`
tokens; perplexity = exp(mean over windows of each window's mean next-token NLL). The token-weighted
variant (exp of total NLL / total predicted tokens) is reported too.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def perplexity(
    model,
    tokenizer,
    texts: list[str],
    *,
    window: int = 128,
    batch_size: int = 16,
    separator: str = "\n\n",
    show_progress: bool = True,
) -> dict[str, float]:
    """Paper-protocol and token-weighted perplexity of `model` on `texts`."""
    if not texts:
        raise ValueError("texts is empty: nothing to evaluate.")
    if window < 2:
        raise ValueError(f"window={window} must be >= 2 tokens.")
    ids = tokenizer(separator.join(texts), return_attention_mask=False)["input_ids"]
    n_windows = len(ids) // window
    if n_windows == 0:
        raise ValueError(f"The joined texts have {len(ids)} tokens, fewer than one window of {window}.")
    blocks = torch.tensor(ids[: n_windows * window]).view(n_windows, window)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    window_means, total_nll, total_tokens = [], 0.0, 0
    with torch.inference_mode():
        for start in tqdm(range(0, n_windows, batch_size), desc="perplexity", disable=not show_progress):
            batch = blocks[start : start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="none"
            )
            nll = nll.view(batch.size(0), -1).double()
            window_means.extend(nll.mean(dim=1).tolist())
            total_nll += nll.sum().item()
            total_tokens += nll.numel()
    model.train(was_training)
    return {
        "perplexity": math.exp(sum(window_means) / len(window_means)),
        "token_weighted_perplexity": math.exp(total_nll / total_tokens),
        "num_windows": n_windows,
        "num_tokens": total_tokens,
    }


def perplexity_metric_path() -> str:
    """Path of the `evaluate` metric module shipped with the package: `evaluate.load(perplexity_metric_path())`
    works offline (``evaluate.load("perplexity")`` fetches a script from the Hub)."""
    return str(Path(__file__).parent / "metrics" / "perplexity" / "perplexity.py")
