"""`evaluate` metric: perplexity in the DistilDP paper's protocol.

Texts are joined by a blank line, tokenized once and cut into non-overlapping windows; the result is
exp of the mean window NLL (and the token-weighted variant). Loads offline from this file:

    import evaluate
    from hf_dpkd.evaluation import perplexity_metric_path

    metric = evaluate.load(perplexity_metric_path())
    metric.compute(predictions=texts, model_id="path/to/model", window=128)
"""

import datasets
import evaluate

_DESCRIPTION = (
    "Perplexity as in DistilDP: texts joined by a blank line, tokenized once, cut into non-overlapping "
    "windows of `window` tokens; exp of the mean over windows of the window's mean next-token NLL. Also "
    "returns the token-weighted perplexity (exp of total NLL / total predicted tokens)."
)
_KWARGS = """
Args:
    predictions (list of str): the texts to score (e.g. the private test split).
    model_id (str): local path or Hub id of a causal LM (its tokenizer is loaded from the same place).
    window (int): tokens per window (default 128, the paper's).
    batch_size (int): windows per forward pass (default 16).
    keep_remainder (bool): also score the last, shorter window (default False, as in the paper).
    device (str): torch device (default "cuda" if available, else "cpu").
Returns:
    perplexity, token_weighted_perplexity, num_windows, num_tokens
"""
_CITATION = """@article{flemings2024distildp,
  title={Differentially Private Knowledge Distillation via Synthetic Text Generation},
  author={Flemings, James and Annavaram, Murali},
  journal={arXiv preprint arXiv:2403.00932},
  year={2024}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id, window=128, batch_size=16, keep_remainder=False, device=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hf_dpkd.evaluation import perplexity

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(model_id).to(device)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        return perplexity(
            model,
            tokenizer,
            list(predictions),
            window=window,
            batch_size=batch_size,
            keep_remainder=keep_remainder,
            show_progress=False,
        )
