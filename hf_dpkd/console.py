"""The pipeline's console: a run log of stages, progress bars and results, without the noise a run expects.

A pipeline run prints one line when a stage starts and one with its seconds when it ends, the progress bars
of its long loops (training, generation, dataset maps), then the results. The Trainer's dict of each logging
step still reaches the loggers of ``report_to`` and ``trainer_state.json``; ``--verbose`` prints it again.
Warnings that every run raises on purpose are fixed where they arise; any other warning still shows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import PrinterCallback, ProgressCallback

#: DeepSpeed's message when it finds no accelerator, printed on every CPU-only machine (accelerate imports
#: DeepSpeed whenever it is installed, DP stages included); its other warnings still show.
DEEPSPEED_CPU_MESSAGE = "Setting accelerator to CPU."


def use_causal_lm_loss_for_gpt2() -> None:
    """Map GPT-2's LM head to transformers' causal-LM loss.

    transformers picks a model's loss from its class name; ``GPT2LMHeadModel`` matches none, so each GPT-2
    that computes a loss warns "`loss_type=None` ... unrecognized" and falls back to the causal-LM loss.
    Registering that same loss under the class name keeps the loss and drops the warning.
    """
    from transformers.loss.loss_utils import LOSS_MAPPING

    LOSS_MAPPING.setdefault("GPT2LMHeadModel", LOSS_MAPPING["ForCausalLM"])


class QuietProgressCallback(ProgressCallback):
    """The Trainer's progress bar, without the dict written under it at each logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


class QuietPrinterCallback(PrinterCallback):
    """What the Trainer uses instead of a bar (``disable_tqdm=True``), without printing each logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`; every other record passes."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextmanager
def run_log(verbose: bool = False) -> Iterator[None]:
    """While a pipeline runs: Trainers built inside print their bars but not their logging dicts, transformers'
    per-file bars (loading and writing weights) stay off, and DeepSpeed's CPU notice is dropped.

    `verbose` keeps everything as transformers and DeepSpeed print it. Everything is restored on exit.
    """
    use_causal_lm_loss_for_gpt2()
    if verbose:
        yield
        return
    import huggingface_hub.utils as hub_utils
    import transformers.trainer as hf_trainer
    from transformers.utils import logging as hf_logging

    saved = {name: getattr(hf_trainer, name) for name in ("DEFAULT_PROGRESS_CALLBACK", "PrinterCallback")}
    if saved["DEFAULT_PROGRESS_CALLBACK"] is ProgressCallback:  # a notebook's widget callback is kept
        hf_trainer.DEFAULT_PROGRESS_CALLBACK = QuietProgressCallback
    hf_trainer.PrinterCallback = QuietPrinterCallback
    bars = hf_logging.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    if bars:
        hf_logging.disable_progress_bar()
        if hub_bars:  # downloads of real models are long loops: their bars stay
            hub_utils.enable_progress_bars()
    deepspeed_filter = _DropMessage(DEEPSPEED_CPU_MESSAGE)
    deepspeed_logger = logging.getLogger("DeepSpeed")
    deepspeed_logger.addFilter(deepspeed_filter)
    try:
        yield
    finally:
        deepspeed_logger.removeFilter(deepspeed_filter)
        if bars:
            hf_logging.enable_progress_bar()
            if not hub_bars:
                hub_utils.disable_progress_bars()
        for name, value in saved.items():
            setattr(hf_trainer, name, value)
