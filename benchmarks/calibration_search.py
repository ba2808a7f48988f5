"""Noise calibration: plain bisection against the package's false-position search, in one run.

Every DP trainer (and the DP histogram) finds the smallest noise multiplier whose epsilon lands within
CALIBRATION_RTOL below its target; each accountant evaluation costs 0.1-0.5 s with PRV, and the calibration
cache only helps the second time the same settings are asked for. Both searches answer the same settings
(the demo teacher's, the `--quick` teacher's, and two of tests/test_accounting.py), each with the accountant's
memo cleared first, alternating. One JSON line per setting: evaluations and seconds of each, and the ratio.

    python benchmarks/calibration_search.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import time

SETTINGS = [  # (name, accountant, target epsilon, sample rate, steps)
    ("demo teacher", "prv", 2.0, 128 / 2970, 72),
    ("quick teacher", "prv", 2.0, 0.1031, 10),
    ("q 0.01, 1,000 steps, eps 8", "prv", 8.0, 0.01, 1000),
    ("q 0.01, 1,000 steps, eps 0.5", "prv", 0.5, 0.01, 1000),
]


def bisection(eps, target: float, rtol: float) -> float:
    """The search calibration used before: double until below the target, then halve the bracket."""
    lo, hi = 0.0, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2
    while not (target * (1 - rtol) <= eps(hi) <= target):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > target else (lo, mid)
    return hi


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2, help="Alternating rounds; each keeps its fastest.")
    args = parser.parse_args()
    from hf_dpkd.privacy import accounting

    for name, accountant, target, q, steps in SETTINGS:
        best = {}
        for _ in range(args.repeats):
            for method in ("bisection", "false_position"):
                accounting._opacus_epsilon.cache_clear()
                calls = []

                def eps(sigma, calls=calls, q=q, steps=steps, accountant=accountant):
                    calls.append(sigma)
                    return accounting.compute_epsilon([(sigma, q, steps)], 1e-5, accountant)

                start = time.perf_counter()
                if method == "bisection":
                    sigma = bisection(eps, target, accounting.CALIBRATION_RTOL)
                else:
                    sigma = accounting._search_noise_multiplier(eps, target, q, steps)
                seconds = time.perf_counter() - start
                epsilon = accounting.compute_epsilon([(sigma, q, steps)], 1e-5, accountant)
                assert target * (1 - accounting.CALIBRATION_RTOL) <= epsilon <= target, (method, epsilon)
                run = {"evaluations": len(set(calls)), "seconds": round(seconds, 3), "sigma": round(sigma, 5)}
                if method not in best or seconds < best[method]["seconds"]:
                    best[method] = run
        print(
            json.dumps(
                {
                    "setting": name,
                    "accountant": accountant,
                    "bisection": best["bisection"],
                    "false_position": best["false_position"],
                    "time_ratio": round(best["bisection"]["seconds"] / best["false_position"]["seconds"], 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
