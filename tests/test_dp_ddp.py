"""DP-SGD over 2 CPU processes (torchrun, gloo): noise once, identical replicas, same epsilon."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

from hf_dpkd.trainers.dp import DPConfig, DPTrainer

SCRIPT = Path(__file__).parent / "scripts" / "ddp_dp_train.py"


def test_two_process_dp_training(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(SCRIPT),
        str(tmp_path),
        "6",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    # noise once: std sigma*C/B = 1.5/10 (twice the noise would give 0.212)
    for r in ranks:
        assert abs(r["noise_std"] - 0.15) / 0.15 < 0.03
    # the replicas stay identical (one all-reduced update)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    # same (sigma, q = 12/120, steps) as one process with per-device batch 12 -> same epsilon
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    ds = Dataset.from_dict({"input_ids": [[1] * 8] * 120, "labels": [[1] * 8] * 120})
    single = DPTrainer(
        model=model,
        args=DPConfig(
            output_dir=str(tmp_path / "single"),
            per_device_train_batch_size=12,
            max_steps=4,
            use_cpu=True,
            report_to=[],
            noise_multiplier=1.0,
        ),
        train_dataset=ds,
        data_collator=default_data_collator,
    )
    assert ranks[0]["sample_rate"] == single.dp_session.sample_rate == 0.1
    single.privacy_ledger.record("dp_sgd", 1.0, single.dp_session.sample_rate, 4)
    assert abs(ranks[0]["epsilon"] - single.privacy_ledger.epsilon()) < 1e-9
    assert ranks[0]["epsilon"] == ranks[1]["epsilon"]
    # user level over 2 ranks: q = 2 x per-device users / 40 users, one update, identical replicas
    for r in ranks:
        assert r["user_num_examples"] == 40 and r["user_sample_rate"] == 12 / 40 and r["user_steps"] == 4
    assert ranks[0]["user_checksum"] == ranks[1]["user_checksum"]
