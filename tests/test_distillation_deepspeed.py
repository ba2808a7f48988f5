"""DistillationTrainer under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes (torchrun, gloo).

ZeRO-3 shards the frozen teacher like the student (each rank holds a slice of every parameter);
ZeRO-2 keeps a full teacher replica per rank. Both finish and save a student that loads with plain
`AutoModelForCausalLM.from_pretrained`.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

SCRIPT = Path(__file__).parent / "scripts" / "deepspeed_distill.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_deepspeed_distillation(tmp_path, stage):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[1]),
        "DS_ACCELERATOR": "cpu",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(SCRIPT),
        str(tmp_path),
        str(stage),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["world_size"] == 2
        assert r["global_step"] == 4
        assert r["teacher_trainable"] == 0
        assert torch.isfinite(torch.tensor(r["train_loss"]))
    full = ranks[0]["teacher_full_numel"]
    if stage == 3:
        assert ranks[0]["teacher_type"] == "DeepSpeedEngine"
        # each rank holds about half of the teacher
        assert all(r["teacher_local_numel"] <= full // 2 + 64 for r in ranks)
    else:
        assert ranks[0]["teacher_type"] == "GPT2LMHeadModel"
        assert all(r["teacher_local_numel"] == full for r in ranks)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert not any(k.startswith("teacher") for k in student.state_dict())
    assert sum(p.numel() for p in student.parameters()) < full
    ids = torch.randint(1, 48, (2, 10), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(student(input_ids=ids).logits).all()
    torch.manual_seed(2)  # the script's initial student: training moved every weight matrix
    init = GPT2LMHeadModel(
        GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=48, n_positions=16, bos_token_id=0, eos_token_id=0
        )
    ).state_dict()
    trained = student.state_dict()
    assert not torch.equal(
        trained["transformer.h.0.attn.c_attn.weight"], init["transformer.h.0.attn.c_attn.weight"]
    )
