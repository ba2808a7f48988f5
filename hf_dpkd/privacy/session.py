"""DPSession: the privacy state of one DP-SGD training, apart from the Trainer that drives it.

What the guarantee depends on lives here and nowhere else: the sample rate over the privacy units, the
noise calibrated against the ledger's earlier releases, the step budget, the secret DP seed (Poisson
batches and noise), the release recorded after every step, the report, and the state a resume restores.
DPTrainer owns one and only wires it into the Trainer loop (in the spirit of Opacus' PrivacyEngine).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import secrets
import uuid
import warnings
from typing import Any

import torch
import torch.distributed as dist

from hf_dpkd._io import atomic_write_bytes
from hf_dpkd.privacy.accounting import (
    UNIFORM,
    PrivacyLedger,
    calibrate_noise_multiplier,
    compute_epsilon,
    default_delta,
)
from hf_dpkd.privacy.sampling import PoissonBatchSampler
from hf_dpkd.privacy.units import UnitIndex

logger = logging.getLogger(__name__)

DP_STATE_NAME = "dp_state.pt"
PRIVACY_UNIT = "one row of the training dataset"


def derived_seed(dp_seed: int, purpose: str) -> int:
    """Independent 63-bit seeds for each use of the DP seed."""
    digest = hashlib.sha256(f"{purpose}:{dp_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def shared_secret_seed(device) -> int:
    """A seed from the OS's secure randomness; under torch.distributed every rank gets rank 0's."""
    seed = secrets.randbits(62)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend_device = device if dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor([seed], dtype=torch.int64, device=backend_device)
        dist.broadcast(value, src=0)
        seed = int(value.item())
    return seed


def check_units_compose(ledger: PrivacyLedger, unit: str, disable_dp: bool) -> None:
    """A user-level training composed with a row-level release protects only rows: refuse that mix."""
    if disable_dp or unit == PRIVACY_UNIT or unit.startswith(PRIVACY_UNIT):
        return
    for r in ledger.releases:
        if r.is_private and r.meta.get("privacy_unit") != unit:
            raise ValueError(
                f"This training protects {unit}, but the earlier release {r.name!r} in its privacy ledger "
                f"protects {r.meta.get('privacy_unit') or 'one row'}: composed, the guarantee would hold per "
                "row only (a user with k rows is covered at about k times that release's epsilon). Make that "
                "release at the same unit (e.g. the control-code histogram with privacy_unit_column), or train "
                "at row level."
            )


class DPSession:
    """Sample rate, noise, step budget, DP seed, ledger and resume state of one DP-SGD training.

    `args` is a DPConfig; `ledger` already holds every earlier release this training composes with
    (a DP teacher's included). `num_units` counts the privacy units (rows, or users with `units`).
    """

    def __init__(
        self,
        args,
        *,
        ledger: PrivacyLedger,
        num_rows: int,
        units: UnitIndex | None,
        privacy_unit: str,
        expected_batch_size: int,
        world_size: int,
    ):
        self.args = args
        self.num_rows = num_rows
        self.units = units
        self.num_examples = units.num_units if units is not None else num_rows
        self.privacy_unit = privacy_unit
        self.expected_batch_size = expected_batch_size
        n = self.num_examples
        self.sample_rate = expected_batch_size / n
        self.steps_per_epoch = max(1, int(round(n / expected_batch_size)))
        if args.max_steps and args.max_steps > 0:
            self.planned_steps = args.max_steps
        else:
            self.planned_steps = math.ceil(args.num_train_epochs * self.steps_per_epoch)
        self.delta = args.target_delta if args.target_delta is not None else default_delta(n)
        if self.delta >= 1.0 / n:
            warnings.warn(
                f"target_delta={self.delta} is >= 1/N = {1.0 / n:.3g}: such a delta allows releasing a whole "
                "example. Use a delta well below 1/N (the default is min(1e-5, 1/(10 N))).",
                stacklevel=4,
            )
        if ledger.accountant != args.accountant:
            raise ValueError(
                f"The privacy ledger uses accountant={ledger.accountant!r} but accountant={args.accountant!r} was "
                "given; use the ledger's accountant so every release is composed the same way."
            )
        ledger.delta = self.delta
        check_units_compose(ledger, privacy_unit, args.disable_dp)
        self.ledger = ledger
        self.mechanism = "subsampled_gaussian" if args.poisson_sampling else UNIFORM
        # What this training is composed with; its own release is not in it (a resume restores it later).
        self.prior_history = ledger.history(private_only=True)
        if ledger.non_private_releases and not args.disable_dp:
            warnings.warn(
                "The privacy ledger holds releases made without DP ("
                + ", ".join(r.name for r in ledger.non_private_releases)
                + "): the total epsilon is infinite whatever this training's noise; the noise is calibrated to "
                "target_epsilon over the DP releases only.",
                stacklevel=4,
            )
        self.max_steps: int | None = None
        if args.disable_dp:
            self.noise_multiplier = 0.0
        elif args.noise_multiplier is not None:
            self.noise_multiplier = float(args.noise_multiplier)
        else:
            self.noise_multiplier = calibrate_noise_multiplier(
                args.target_epsilon,
                self.delta,
                self.sample_rate,
                self.planned_steps,
                accountant=args.accountant,
                prior_history=self.prior_history,
                mechanism=self.mechanism,
            )
            self.max_steps = self._max_steps_within_budget(self.planned_steps)
        self.steps = 0
        self._release_name: str | None = None
        self.sampler = PoissonBatchSampler(
            n,
            self.sample_rate,
            self.steps_per_epoch,
            num_parts=args.gradient_accumulation_steps,
            seed=0,  # set by use_seed
            rank=args.process_index,
            world_size=world_size,
            poisson=args.poisson_sampling,
            units=units,
            max_rows_per_unit=args.max_rows_per_unit,
        )
        self.noise_generator = torch.Generator(device=args.device)
        self.use_seed(args.dp_seed if args.dp_seed is not None else shared_secret_seed(args.device))
        logger.info(
            "DP-SGD: N=%d, expected batch=%d, q=%.4g, steps=%d, noise_multiplier=%.4g, C=%s, accountant=%s, delta=%.3g",
            n,
            expected_batch_size,
            self.sample_rate,
            self.planned_steps,
            self.noise_multiplier,
            args.per_sample_max_grad_norm,
            args.accountant,
            self.delta,
        )

    # -- seed and budget ------------------------------------------------------------------------------
    def use_seed(self, dp_seed: int) -> None:
        """Seed the Poisson sampler and the noise generator from `dp_seed` (secret unless the user set it)."""
        self.seed = int(dp_seed)
        self.sampler.seed = derived_seed(self.seed, "poisson-sampling")
        self.noise_generator.manual_seed(derived_seed(self.seed, "gaussian-noise"))
        # A public, random name for this run's draw (no relation to the seed): tells two training runs apart
        # in a composed ledger, and lets a resume update its own release and nothing else.
        self.noise_draw = uuid.uuid4().hex

    def release_entry(self, steps: int) -> tuple:
        entry = (self.noise_multiplier, self.sample_rate, steps)
        return entry + ((UNIFORM,) if self.mechanism == UNIFORM else ())

    def _max_steps_within_budget(self, planned: int) -> int:
        """Largest step count whose composed epsilon stays within target_epsilon (>= planned by calibration)."""

        def within(k: int) -> bool:
            eps = compute_epsilon(
                self.prior_history + [self.release_entry(k)], self.delta, self.args.accountant
            )
            return eps <= self.args.target_epsilon

        if not within(planned + 1):  # the usual case: calibration leaves less than a step of budget
            return planned
        lo, hi = planned + 1, planned * 2 + 1
        while within(hi) and hi < planned * 1024:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if within(mid) else (lo, mid)
        return lo

    @property
    def budget_reached(self) -> bool:
        """Whether one more step would exceed target_epsilon."""
        return self.max_steps is not None and self.steps >= self.max_steps

    # -- releases ---------------------------------------------------------------------------------------
    @property
    def release_name(self) -> str:
        """This training's name in the ledger: privacy_release_name, with a suffix if an earlier release had it."""
        return self._release_name or self.args.privacy_release_name

    def on_step(self) -> None:
        """One noisy step was taken: count it and record the release as it now stands."""
        self.steps += 1
        if self.args.disable_dp:
            return
        release = self.ledger.record(
            self.release_name,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            mechanism=self.mechanism,
            max_grad_norm=self.args.per_sample_max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            num_examples=self.num_examples,
            privacy_unit=self.privacy_unit,
            **({"num_rows": self.num_rows} if self.units is not None else {}),
            noise_draw=self.noise_draw,
        )
        self._release_name = release.name

    def report(self) -> dict[str, Any]:
        """Epsilon recomputed from the steps actually taken, with everything the accountant used."""
        args, ledger = self.args, self.ledger
        release_eps = (
            compute_epsilon([self.release_entry(self.steps)], ledger.delta, args.accountant)
            if not args.disable_dp
            else math.inf
        )
        return {
            "epsilon": ledger.epsilon() if not args.disable_dp else math.inf,
            "delta": ledger.delta,
            "accountant": args.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "per_sample_max_grad_norm": args.per_sample_max_grad_norm,
            "expected_batch_size": self.expected_batch_size,
            "num_examples": self.num_examples,
            "num_rows": self.num_rows,
            "sampling": "poisson" if args.poisson_sampling else "uniform_fixed_size",
            "privacy_unit": self.privacy_unit,
            "release": self.release_name,
            "epsilon_is_upper_bound": not ledger.approximate,
            "release_epsilon": release_eps,
            "disable_dp": args.disable_dp,
            "ledger": ledger.to_dict(),
        }

    # -- resume -------------------------------------------------------------------------------------------
    def save_state(self, checkpoint: str) -> None:
        """The resume state, with the secret DP seed: checkpoints only (mode 0600), never a model folder."""
        buf = io.BytesIO()
        torch.save(
            {
                "noise_generator": self.noise_generator.get_state(),
                "dp_seed": self.seed,  # secret: checkpoints stay with the private data
                "noise_draw": self.noise_draw,
                "dp_steps": self.steps,
                "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate,
            },
            buf,
        )
        atomic_write_bytes(os.path.join(checkpoint, DP_STATE_NAME), buf.getvalue(), secret=True)

    def restore(self, checkpoint: str) -> None:
        """Restore the accountant history, DP step count, seed and noise RNG saved with `checkpoint`."""
        state_path = os.path.join(checkpoint, DP_STATE_NAME)
        if not os.path.isfile(state_path):
            raise ValueError(
                f"Checkpoint {checkpoint} has no {DP_STATE_NAME}: it was not written by DPTrainer, so the privacy "
                "accounting cannot be resumed. Start from a DPTrainer checkpoint or from scratch."
            )
        state = torch.load(state_path, weights_only=False)
        if not math.isclose(
            state["noise_multiplier"], self.noise_multiplier, rel_tol=1e-9
        ) or not math.isclose(state["sample_rate"], self.sample_rate, rel_tol=1e-12):
            raise ValueError(
                f"The checkpoint was trained with noise_multiplier={state['noise_multiplier']:.6g}, "
                f"sample_rate={state['sample_rate']:.6g}, but the current settings give "
                f"{self.noise_multiplier:.6g}, {self.sample_rate:.6g}. Resume with the same DPConfig."
            )
        if "dp_seed" in state:  # the interrupted run's draws continue (sampler and noise)
            self.use_seed(state["dp_seed"])
        self.noise_draw = state.get("noise_draw", self.noise_draw)
        self.noise_generator.set_state(state["noise_generator"])
        self.steps = int(state["dp_steps"])
        if not self.args.disable_dp:
            saved = PrivacyLedger.load(checkpoint)
            saved.delta = self.ledger.delta
            self.ledger.releases = saved.releases
            own = [r for r in saved.releases if r.meta.get("noise_draw") == self.noise_draw]
            self._release_name = own[0].name if own else None
