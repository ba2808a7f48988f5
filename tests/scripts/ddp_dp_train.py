"""Run under `torchrun --nproc_per_node 2` (gloo, CPU): checks noise-once and trains DPTrainer over DDP."""

import json
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

from hf_dpkd.privacy.engine import DPSGDOptimizer
from hf_dpkd.trainers.dp import DPConfig, DPTrainer

out_dir, per_device = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)

# 1) Noise is drawn once (on rank 0), not once per rank: the update std is sigma*C/B.
dist.init_process_group("gloo")
rank = dist.get_rank()
p = torch.nn.Parameter(torch.zeros(20_000))
opt = DPSGDOptimizer(
    torch.optim.SGD([p], lr=1.0),
    noise_multiplier=1.5,
    max_grad_norm=1.0,
    expected_batch_size=10.0,
    grad_sample_module=torch.nn.Module(),
    generator=torch.Generator().manual_seed(100 + rank),
)
opt.step()
noise_std = float((-p.detach()).std())

# 2) DPTrainer on 2 ranks (the Trainer sees the existing gloo process group).
torch.manual_seed(0)
model = GPT2LMHeadModel(
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0)
)
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 40, (120, 8), generator=g).tolist()
ds = Dataset.from_dict({"input_ids": ids, "labels": ids})
common = dict(
    per_device_train_batch_size=per_device,
    max_steps=4,
    use_cpu=True,
    report_to=[],
    noise_multiplier=1.0,
    max_physical_batch_size=4,
    save_strategy="no",
    seed=0,
    learning_rate=1e-2,
    ddp_backend="gloo",
)
args = DPConfig(output_dir=out_dir, **common)
trainer = DPTrainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
trainer.train()
checksum = float(sum(q.detach().double().sum() for q in trainer.model.parameters()))
report = trainer.privacy_report()

# 3) User-level DP on 2 ranks: 40 users of 3 rows each; each rank samples its own share of the USERS.
torch.manual_seed(0)
user_model = GPT2LMHeadModel(
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0)
)
users = Dataset.from_dict({"input_ids": ids, "labels": ids, "user_id": [f"u{i // 3}" for i in range(120)]})
user_args = DPConfig(output_dir=f"{out_dir}/users", privacy_unit_column="user_id", **common)
user_trainer = DPTrainer(
    model=user_model, args=user_args, train_dataset=users, data_collator=default_data_collator
)
user_trainer.train()
user_report = user_trainer.privacy_report()
user_checksum = float(sum(q.detach().double().sum() for q in user_trainer.model.parameters()))
with open(f"{out_dir}/rank{rank}.json", "w") as f:
    json.dump(
        {
            "noise_std": noise_std,
            "checksum": checksum,
            "epsilon": report["epsilon"],
            "sample_rate": report["sample_rate"],
            "world_size": dist.get_world_size(),
            "steps": report["steps"],
            "user_checksum": user_checksum,
            "user_sample_rate": user_report["sample_rate"],
            "user_num_examples": user_report["num_examples"],
            "user_steps": user_report["steps"],
        },
        f,
    )
