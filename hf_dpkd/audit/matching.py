"""Members and non-members that differ only in membership: matched on control code and text length.

A membership attack scores how easy a text is for the model. If the non-members are longer, or written under
other control codes, than the members, the attack separates the two samples without any leak. Non-members
are therefore drawn from the held-out pool to match the members (same control code, nearest length), and
what remains of the difference is measured and reported (`record_balance`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence

import numpy as np

from hf_dpkd.audit.scoring import Record, as_records


def record_balance(
    members: Sequence[Record] | Sequence[str], non_members: Sequence[Record] | Sequence[str]
) -> dict:
    """How far apart the two samples are on what makes a text easy, without looking at any model.

    `standardized_length_difference`: (mean member length - mean non-member length) / pooled standard
    deviation, text characters (|d| < 0.1 is a negligible imbalance). `code_total_variation`: total variation
    distance between the control-code (prefix) distributions, 0 = identical, 1 = disjoint.
    """
    mem, non = as_records(members, "members"), as_records(non_members, "non_members")
    if not mem or not non:
        raise ValueError(f"members ({len(mem)}) and non_members ({len(non)}) must both be non-empty")
    lm = np.array([len(t) for _, t in mem], dtype=np.float64)
    ln = np.array([len(t) for _, t in non], dtype=np.float64)
    pooled = float(np.sqrt((lm.var() + ln.var()) / 2))
    diff = float(lm.mean() - ln.mean())
    cm, cn = Counter(p for p, _ in mem), Counter(p for p, _ in non)
    tv = 0.5 * sum(abs(cm[c] / len(mem) - cn[c] / len(non)) for c in set(cm) | set(cn))
    return {
        "member_mean_length": float(lm.mean()),
        "non_member_mean_length": float(ln.mean()),
        "standardized_length_difference": diff / pooled if pooled > 0 else 0.0,
        "code_total_variation": float(tv),
        "num_codes": len(set(cm) | set(cn)),
    }


def match_non_members(
    members: Sequence[Record] | Sequence[str], pool: Sequence[Record] | Sequence[str], seed: int = 0
) -> tuple[list[Record], dict]:
    """One non-member per member, drawn without replacement from `pool` (held-out records).

    Members are visited in a seeded random order; each takes the unused pool record with the same control
    code (prefix) and the nearest text length (characters), or, when its code has no record left, the
    nearest length under any code. Returns the non-members (in member order) and `record_balance` of the
    result with "num_code_matched" (members matched within their code) and "pool_size". With a pool no larger
    than the members there is no choice: every pool record is used, and the balance says how far apart the
    samples are.
    """
    mem = as_records(members, "members")
    candidates = as_records(pool, "pool")
    if len(candidates) < len(mem):
        raise ValueError(
            f"pool has {len(candidates)} records for {len(mem)} members; one non-member per member needs a pool "
            "at least as large (audit fewer members)"
        )
    by_code: dict[str, list[tuple[int, int]]] = {}
    anywhere: list[tuple[int, int]] = []
    for i, (prefix, text) in enumerate(candidates):
        by_code.setdefault(prefix, []).append((len(text), i))
        anywhere.append((len(text), i))
    for lst in (*by_code.values(), anywhere):
        lst.sort()

    def nearest(lst: list[tuple[int, int]], length: int) -> tuple[int, int]:
        k = bisect.bisect_left(lst, (length, -1))
        options = [lst[j] for j in (k - 1, k) if 0 <= j < len(lst)]
        return min(options, key=lambda x: (abs(x[0] - length), x[0], x[1]))

    chosen: list[int | None] = [None] * len(mem)
    code_matched = 0
    for m in np.random.default_rng(seed).permutation(len(mem)).tolist():
        prefix, text = mem[m]
        same = by_code.get(prefix)
        pick = nearest(same if same else anywhere, len(text))
        code_matched += bool(same)
        chosen[m] = pick[1]
        anywhere.pop(bisect.bisect_left(anywhere, pick))
        group = by_code[candidates[pick[1]][0]]
        group.pop(bisect.bisect_left(group, pick))
    non_members = [candidates[i] for i in chosen]
    report = record_balance(mem, non_members)
    report.update(num_code_matched=code_matched, pool_size=len(candidates))
    return non_members, report


__all__ = ["match_non_members", "record_balance"]
