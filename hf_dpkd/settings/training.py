"""The training settings: the teacher's and the students' models, DP-SGD, LoRA and distillation flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hf_dpkd.peft_support import PeftMethod
from hf_dpkd.privacy.engine import ClippingMode
from hf_dpkd.settings.fields import Arguments
from hf_dpkd.trainers.losses import KdLoss

DpOpdTeacher = Literal["dp_half", "public"]


@dataclass
class TeacherArguments(Arguments):
    dp_teacher: str | None = field(
        default=None,
        metadata={
            "help": "A DP teacher trained earlier by this project (its folder, or the Hub id it was pushed to, "
            "with privacy_ledger.json): the teacher stage uses it instead of training one; its ledger is "
            "composed with this run's releases."
        },
    )
    teacher_model: str = field(
        default="demo",
        metadata={"help": "'demo' (a small GPT-2 pretrained on the public split), a path or Hub id."},
    )
    student_model: str = field(
        default="demo",
        metadata={"help": "'demo' (a smaller GPT-2 pretrained on the public split), a path or Hub id."},
    )
    pretrain_steps: int = field(
        default=200, metadata={"help": "Demo only: public pretraining steps per base model."}
    )
    demo_teacher_shape: str = field(
        default="4x128",
        metadata={"help": "Demo only: the teacher's GPT-2 layers x width (940K parameters at 4x128)."},
    )
    demo_student_shape: str = field(
        default="2x64",
        metadata={
            "help": "Demo only: the student's GPT-2 layers x width (174K parameters at 2x64: 5.4x smaller than "
            "the teacher; the paper distils 9.4x)."
        },
    )
    teacher_epochs: float = field(default=3.0, metadata={"help": "DP-SGD epochs of the teacher."})
    teacher_learning_rate: float = field(default=2e-3, metadata={"help": "Teacher learning rate."})
    teacher_batch_size: int = field(default=128, metadata={"help": "Expected logical batch per device."})
    teacher_gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Teacher accumulation steps."}
    )
    max_physical_batch_size: int = field(
        default=32, metadata={"help": "Micro-batch size of DP-SGD (memory only)."}
    )
    per_sample_max_grad_norm: float = field(default=1.0, metadata={"help": "DP-SGD per-sample clip norm."})
    non_private_epochs: float = field(
        default=2.0,
        metadata={
            "help": "Epochs of the non-private reference teacher (recipes/demo_full.yaml: 8, to show memorisation)."
        },
    )
    clipping_mode: ClippingMode = field(
        default="auto",
        metadata={
            "help": "DP-SGD clipping mode (see DPConfig): auto = bookkeeping where supported (fastest)."
        },
    )
    teacher_peft: PeftMethod = field(
        default="none",
        metadata={
            "help": "none (full DP-SGD fine-tuning) or lora: the DP teachers (teacher, and the DPKD / DP-OPD "
            "teacher) train only LoRA adapters with DP-SGD; generation and distillation use the adapter merged "
            "into the public base teacher, and teacher/final holds the adapter with its privacy card."
        },
    )
    student_peft: PeftMethod = field(
        default="none",
        metadata={
            "help": "none or lora: the same for the students trained with DP-SGD on the private data "
            "(dp_sgd_student, dpkd, dp_opd). Non-private references and synthetic-data students stay full."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (--teacher_peft/--student_peft lora)."})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / r."}
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["c_attn", "c_proj", "c_fc"],
        metadata={
            "help": "Comma- or space-separated names of the Linear/Conv1D layers that get adapters (default: GPT-2's "
            "attention and MLP projections, the demo's models; e.g. q_proj,k_proj,v_proj,o_proj for Llama)."
        },
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    train_dropout: str = field(
        default="0",
        metadata={
            "help": "Dropout probability of every model while it trains here (teachers and students), or 'keep' "
            "for each checkpoint's own. Default 0: DP-SGD's clipping and noise already regularise, and dropout "
            "makes a small model's training step about 1.4x slower on CPU (docs/performance.md)."
        },
    )

    def train_dropout_probability(self) -> float | None:
        """--train_dropout as a probability, or None for 'keep' (checked: the error names the flag)."""
        if self.train_dropout.strip().lower() == "keep":
            return None
        try:
            p = float(self.train_dropout)
        except ValueError:
            p = -1.0
        if not 0.0 <= p < 1.0:
            raise ValueError(
                f"--train_dropout {self.train_dropout!r}: give a probability in [0, 1) or 'keep' (each "
                "checkpoint's own dropout)."
            )
        return p

    def lora_settings(self):
        """The LoRA settings of --lora_* (checked: every error names the flag)."""
        from hf_dpkd.peft_support import LoraSettings

        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            target_modules=tuple(self.lora_target_modules),
            dropout=self.lora_dropout,
        )


@dataclass
class StudentArguments(Arguments):
    student_epochs: float = field(default=3.0, metadata={"help": "Epochs over the synthetic data."})
    student_learning_rate: float = field(default=2e-3, metadata={"help": "Student learning rate."})
    student_batch_size: int = field(
        default=32, metadata={"help": "Student per-device batch (synthetic data)."}
    )
    kd_lambda: float = field(
        default=0.4, metadata={"help": "Weight of the KD term (1-lambda on CE); paper 0.4."}
    )
    kd_temperature: float = field(default=1.0, metadata={"help": "Distillation temperature t (paper: 1)."})
    kd_loss: KdLoss = field(
        default="forward_kl", metadata={"help": "Distillation divergence (paper: forward_kl)."}
    )
    alpha_hidden: float = field(default=0.0, metadata={"help": "Weight of the hidden-state alignment term."})
    on_policy_epochs: float = field(
        default=2.0,
        metadata={"help": "Epochs of the on-policy student (its rollouts make each step costlier)."},
    )
    on_policy_ratio: float = field(
        default=0.25, metadata={"help": "Share of on-policy batches (on_policy method)."}
    )
    dp_student_epochs: float = field(
        default=3.0, metadata={"help": "DP-SGD epochs of private-data students."}
    )
    dp_opd_teacher: DpOpdTeacher = field(
        default="dp_half",
        metadata={
            "help": "Teacher of the dp_opd method: 'dp_half' (DP-SGD at epsilon/2 on the private data, the dpkd "
            "teacher; its release is composed, so the student gets the other half) or 'public' (the public base "
            "teacher, which never saw the private data: the student gets all of epsilon)."
        },
    )
    dp_opd_prompt_tokens: int = field(
        default=8,
        metadata={
            "help": "dp_opd: tokens of each private text after its control codes in the prompt the student continues."
        },
    )
    dp_opd_max_new_tokens: int = field(
        default=64,
        metadata={"help": "dp_opd: tokens per student rollout (at most half of --max_length)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dp_opd_prompt_tokens < 0 or self.dp_opd_max_new_tokens < 1:
            raise ValueError(
                f"--dp_opd_prompt_tokens {self.dp_opd_prompt_tokens} must be >= 0 and --dp_opd_max_new_tokens "
                f"{self.dp_opd_max_new_tokens} >= 1."
            )
