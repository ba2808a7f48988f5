"""Run under `torchrun --nproc_per_node 2` (gloo, CPU): DistillationTrainer with DeepSpeed ZeRO-2 or ZeRO-3.

Writes rank{r}.json (what each rank saw of the teacher) and, on rank 0, saves the student to out_dir/student.
"""

import json
import sys

import deepspeed.ops
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

from hf_dpkd.trainers.distillation import DistillationConfig, DistillationTrainer

out_dir, stage = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
# DeepSpeed's CPU shared-memory all-reduce is a C++ op compiled on first use; it serves inference
# all-reduce only (not used here), and two ranks compiling it at once on a fresh machine can race.
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def model(n_layer, n_embd, seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=2,
            vocab_size=48,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


ds_config = {
    "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
}
args = DistillationConfig(
    output_dir=out_dir,
    per_device_train_batch_size=4,
    max_steps=4,
    learning_rate=1e-2,
    use_cpu=True,
    report_to=[],
    save_strategy="no",
    deepspeed=ds_config,
    alpha_ce=0.6,
    alpha_kd=0.4,
    seed=0,
)
# Built after the config, as users do: under ZeRO-3 the models may then be created partitioned.
teacher = model(2, 32, seed=1)
student = model(1, 16, seed=2)
g = torch.Generator().manual_seed(0)
ids = torch.randint(1, 48, (64, 12), generator=g).tolist()
data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 12] * 64, "labels": ids})
trainer = DistillationTrainer(
    model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=default_data_collator
)
result = trainer.train()
rank = trainer.args.process_index
info = {
    "world_size": trainer.args.world_size,
    "teacher_type": type(trainer.teacher).__name__,
    # ZeRO-3 shards the teacher: each rank holds a slice of every parameter (ds_tensor), not all of it
    "teacher_local_numel": sum(
        (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) for p in trainer.teacher.parameters()
    ),
    "teacher_full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in trainer.teacher.parameters()),
    "teacher_trainable": sum(p.requires_grad for p in trainer.teacher.parameters()),
    "train_loss": result.training_loss,
    "global_step": trainer.state.global_step,
}
trainer.save_model(out_dir + "/student")
with open(f"{out_dir}/rank{rank}.json", "w") as f:
    json.dump(info, f)
