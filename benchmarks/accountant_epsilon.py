"""The epsilons one DP training asks for: Opacus' accountants as they are against the package's memoised
RDP curve (hf_dpkd/privacy/opacus_epsilon.py), in one run.

A DP trainer composed with the DP histogram asks its accountant for: the calibration search (6-7 noise
multipliers), the last step its budget allows, then at every log line and checkpoint the ledger's epsilon
and the release's own. The queries of each setting are listed first (untimed), then both ways answer all of
them, alternating, each with every memo cleared; the answers are compared outside the timed part (they must
be the same floats). One JSON line per setting.

    python benchmarks/accountant_epsilon.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

HISTOGRAM = (10.0, 1.0, 1)  # the DP control-code histogram's release, composed before the teacher
SETTINGS = [  # (name, target epsilon, sample rate, steps, checkpoint/log every)
    ("demo teacher", 2.0, 128 / 2970, 72, 10),
    ("quick teacher", 2.0, 0.1031, 10, 2),
]
DELTA = 1e-5


def training_queries(target: float, q: float, steps: int, every: int) -> list[tuple]:
    """The histories a DP training's accountant answers, in the order it asks them."""
    from hf_dpkd.privacy import accounting

    queries: list[tuple] = []

    def eps(sigma: float) -> float:
        queries.append((HISTOGRAM, (sigma, q, steps)))
        return accounting.compute_epsilon([HISTOGRAM, (sigma, q, steps)], DELTA)

    sigma = accounting._search_noise_multiplier(eps, target, q, steps)
    queries.append((HISTOGRAM, (sigma, q, steps + 1)))  # the budget's last step: one past the plan
    for done in [*range(every, steps, every), steps]:
        queries += [(HISTOGRAM, (sigma, q, done)), ((sigma, q, done),)]  # the ledger, the release alone
    return queries


def opacus_prv(history: tuple, delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2, help="Alternating rounds; each keeps its fastest.")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from hf_dpkd.privacy import accounting, opacus_epsilon

    for name, target, q, steps, every in SETTINGS:
        queries = training_queries(target, q, steps, every)
        best, answers = {}, {}
        for _ in range(args.repeats):
            for method, fn in (("opacus", opacus_prv), ("memoised_curve", opacus_epsilon.prv_epsilon)):
                accounting._opacus_epsilon.cache_clear()
                opacus_epsilon._rdp_curve.cache_clear()
                start = time.perf_counter()
                answers[method] = [fn(h, DELTA) for h in queries]
                best[method] = min(best.get(method, float("inf")), time.perf_counter() - start)
        if answers["opacus"] != answers["memoised_curve"]:
            raise SystemExit(f"{name}: the two ways disagree")
        print(
            json.dumps(
                {
                    "setting": name,
                    "queries": len(queries),
                    "opacus_s": round(best["opacus"], 3),
                    "memoised_curve_s": round(best["memoised_curve"], 3),
                    "speedup": round(best["opacus"] / best["memoised_curve"], 2),
                    "same_values": True,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
