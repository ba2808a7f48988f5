"""`evaluate` metric: perplexity in the DistilDP paper's protocol (non-overlapping windows over joined texts).

import evaluate
from hf_dpkd.evaluation import perplexity_metric_path
metric = evaluate.load(perplexity_metric_path())
metric.compute(predictions=texts, model_id="path/to/model", window=128)
"""

import datasets
import evaluate

_DESCRIPTION = (
    "Perplexity as in DistilDP: texts joined by a blank line, cut into non-overlapping windows; "
    "exp of the mean window NLL (and the token-weighted variant)."
)
_KWARGS = (
    "predictions: list of texts; model_id: local path or Hub id of a causal LM; window: tokens per window."
)


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id, window=128, batch_size=16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hf_dpkd.evaluation import perplexity

        model = AutoModelForCausalLM.from_pretrained(model_id)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        return perplexity(
            model, tokenizer, list(predictions), window=window, batch_size=batch_size, show_progress=False
        )
