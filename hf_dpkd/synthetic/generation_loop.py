"""The decode loop of synthetic generation: sample a LEFT-padded batch with the KV cache, and drop the rows that
finished from the batch (and from the cache) as it goes.

`generate` decodes every row until the last one stops: the synthetic reviews stop at very different lengths
(the demo's: median 57 tokens, longest 122), so about half of its row-steps compute tokens nobody keeps.
This loop runs the same steps (the forward, the processors on the logits, the argmax of what they return)
on the rows still running, so each row gets the tokens `generate` would have sampled with the same law.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LogitsProcessorList

#: Drop finished rows once they are this share of the batch: each drop copies the cache, so not every step.
COMPACT_SHARE = 0.125


@torch.no_grad()
def sample_rows(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    processors_for: Callable[[torch.Tensor], LogitsProcessorList],
    ends: torch.Tensor,
    stop_ids: set[int],
    pad_id: int,
) -> list[list[int]]:
    """Each row's new tokens, up to and including its first token of `stop_ids`, or until it holds `ends[row]`
    tokens (left padding included, as `input_ids` lays it out).

    `processors_for(rows)` gives the logits processors of the running rows (indices into the batch), the last
    of which is a TokenSampler: the step's token is what it draws from what the others leave.
    """
    rows, width = input_ids.shape
    device = input_ids.device
    running = torch.arange(rows, device=device)  # batch index of each row of the current (compacted) batch
    ends = ends.to(device)
    stops = torch.tensor(sorted(stop_ids), device=device)
    # every row's new tokens by step (pad once it stopped); cut at each row's own end below
    steps = int(ends.max()) - width
    drawn = torch.full((rows, max(steps, 0)), pad_id, dtype=torch.long, device=device)
    stopped_at = torch.full((rows,), max(steps, 0), dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)  # by current row, until compacted away
    *warpers, sampler = processors_for(running)
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # as `generate` does
    # a row's last position: it stops there, but stays in the batch (fed pads) until the next compaction,
    # and must not be fed positions past the model's last one in the meantime
    last_position = ends - 1 - (width - attention_mask.sum(-1))
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1, :].float()
    seqs = input_ids
    for step in range(steps):
        for warper in warpers:
            logits = warper(seqs, logits)
        token = sampler.draw(logits)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        drawn[running, step] = token
        now = ~finished & (torch.isin(token, stops) | (seqs.shape[1] >= ends[running]))
        stopped_at[running[now]] = step + 1
        finished |= now
        if bool(finished.all()):
            break
        if int(finished.sum()) >= max(1, int(COMPACT_SHARE * len(running))):
            keep = (~finished).nonzero().squeeze(1)
            running, seqs, attention_mask = running[keep], seqs[keep], attention_mask[keep]
            finished = finished[keep]
            cache.batch_select_indices(keep)
            *warpers, sampler = processors_for(running)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(running), 1)], dim=1)
        step_out = model(
            input_ids=seqs[:, -1:],
            attention_mask=attention_mask,
            position_ids=torch.minimum(attention_mask.sum(-1) - 1, last_position[running])[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        cache, logits = step_out.past_key_values, step_out.logits[:, -1, :].float()
    return [row[:end] for row, end in zip(drawn.tolist(), stopped_at.tolist(), strict=True)]
