"""Run under torchrun with 2 processes: generate into one output dir and print the shard seeds each rank ran."""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_dpkd.synthetic.generation as generation
from hf_dpkd.privacy.histogram import uniform_distribution
from tests.test_synthetic import DOMAIN, FMT

torch.set_num_threads(1)
torch.distributed.init_process_group("gloo")
ran = []
inner = generation._generate_shard


def recording(*args, **kwargs):
    ran.append(args[-1])  # the shard's derived seed: unique per shard
    return inner(*args, **kwargs)


generation._generate_shard = recording
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ds = generation.generate_synthetic_dataset(
    model,
    tok,
    uniform_distribution(FMT, DOMAIN),
    50,
    sys.argv[2],
    fmt=FMT,
    generation=generation.SyntheticGenerationConfig(max_length=24, min_words=1),
    seed=1,
    shard_prompts=4,
    show_progress=False,
)
print("RESULT " + json.dumps({"rank": torch.distributed.get_rank(), "shards": ran, "rows": len(ds)}))
