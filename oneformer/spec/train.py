"""The train section of the spec: the loop, devices, optimizer and schedule, checkpoints."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, field_validator

from oneformer.sections import Section, section, tunable

log = logging.getLogger("oneformer.spec")  # one logger for the whole spec package, as before the split


class OptimConfig(Section):
    """Optimizer and learning-rate schedule."""

    type: Literal["AdamW", "SGD"] = Field("AdamW", description="Optimizer: AdamW (momentum is its beta1) or SGD "
                                                              "with momentum")
    lr: float = tunable(1e-4, 1e-6, 1e-2, "log", description="Learning rate of everything but the backbone")
    backbone_multiplier: float = tunable(0.1, 0.01, 1.0, "log", description="Backbone lr = lr * this")
    momentum: float = tunable(0.9, 0.5, 0.99, description="SGD momentum / AdamW beta1")
    weight_decay: float = tunable(0.05, 1e-5, 0.1, "log", description="Weight decay of every trained parameter")
    lr_scheduler: Literal["MultiStep", "StepLR", "Poly", "Cosine", "Constant"] = Field(
        "MultiStep", description="Per-step schedule after warm-up: MultiStep (lr *= gamma at each milestone), "
                                 "StepLR (every step_size epochs), Poly (power 0.9 to 0), Cosine (to 0), Constant")
    milestones: list[int] = Field(default_factory=lambda: [44, 48], description="Epochs where lr *= gamma")
    gamma: float = Field(0.1, gt=0, description="Factor the lr is multiplied by at each MultiStep or StepLR decay")
    step_size: int = Field(10, gt=0, description="Epochs between decays for StepLR")
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up length in epochs")
    monitor_name: Literal["val_loss", "train_loss", "mIoU"] = Field(
        "mIoU", description="TAO's checkpoint monitor; here 'best' is always the highest validation mIoU (the "
                            "pipeline selects by it), so val_loss / train_loss are noted and not used")


class TensorBoardConfig(Section):
    """TAO's TensorBoard switch (train.tensorboard): metrics go to MLflow here."""

    enabled: bool = Field(False, description="TensorBoard logging; true is noted: every metric is in MLflow")
    infrequent_logging_frequency: int = Field(1, ge=1, description="TAO's image-logging interval; informational")


class TrainConfig(Section):
    """Training loop, devices and checkpoints."""

    num_gpus: int = Field(1, ge=0, description="Devices; 0 or no CUDA means CPU")
    gpu_ids: list[int] = Field(default_factory=lambda: [0], description="GPUs to train on, one process each; "
                                                                        "where num_gpus is larger, that many "
                                                                        "(TAO's rule: the larger wins)")
    num_nodes: int = Field(1, ge=1, description="Machines of the DDP job, each running its own processes; > 1 is "
                                                "multi-node")
    num_processes: int = Field(
        1, ge=1, description="Training on CPU (num_gpus 0 or no CUDA): DDP processes on this machine (gloo), each "
                             "with dataset.train.batch_size images and a share of the cores; GPUs use num_gpus and "
                             "gpu_ids, one process each")
    seed: int = Field(1234, ge=0, description="Seed of Python, NumPy, torch, the loader workers and the DDP "
                                              "shuffle; automl.sampler is seeded from it too")
    verify_data: Literal["decode", "headers"] = Field(
        "decode", description="What training checks of every image and mask before its first step: decode them all "
                              "(a corrupt file fails in seconds; about 3 ms a 640 px file on 2 cores, once per "
                              "process) or read their headers only (sizes and formats; for very large datasets "
                              "already checked with `oneformer check --deep`)")
    num_epochs: int = Field(50, gt=0, description="Epochs to train")
    checkpoint_interval: int = Field(1, gt=0, description="Save a checkpoint (model_epoch_EEE_step_SSSSS.pth) "
                                                          "every this many epochs, and after the last")
    validation_interval: int = Field(1, gt=0, description="Validate (mIoU on dataset.val) every this many epochs")
    iters_per_epoch: int | None = Field(None, gt=0, description="Limit batches per epoch")
    results_dir: str | None = Field(None, description="Training folder (checkpoints, index, status); default "
                                                      "<results_dir>/train")
    resume_training_checkpoint_path: str | None = Field(
        None, description="Checkpoint to resume from (weights, optimizer and loop state); empty: the training "
                          "folder's newest checkpoint, if any")
    pretrained_model: str | None = Field(None, description="Our checkpoint, a transformers folder or hub id")
    pretrained_backbone: str | None = Field(None, description="Swin weights to start the backbone from: a state-dict "
                                                              "file (Detectron2 or transformers names) or a "
                                                              "transformers Swin folder or hub id")
    precision: str = Field("32", description="Lightning precision: 32, 16-mixed, bf16-mixed")
    optim: OptimConfig = section(OptimConfig)
    clip_grad_type: Literal["full", "norm", "value"] = Field(
        "full", description="full and norm: clip the L2 norm of all gradients together to clip_grad_norm; value: "
                            "clip each gradient element to +-clip_grad_norm")
    clip_grad_norm: float = Field(0.01, ge=0, description="0 disables clipping")
    freeze: list[str] = Field(default_factory=list, description="Modules to freeze: TAO's names (backbone, "
                                                                "pixel_decoder, transformer_decoder, sem_seg_head, "
                                                                "task_mlp, text_encoder, text_projector, prompt_ctx) "
                                                                "or parameter-name patterns (fnmatch)")
    activation_checkpoint: bool = Field(False, description="Gradient checkpointing of the backbone: its "
                                                          "activations are recomputed in backward, not kept "
                                                          "(benchmarks/activation_checkpoint.py)")
    distributed_strategy: Literal["ddp", "ddp_sharded", "fsdp"] = Field(
        "ddp", description="ddp_sharded (fairscale's sharded DDP) left Lightning 2, and fsdp (TAO Mask2Former's) "
                           "is not offered: both run as ddp, with a note; save memory with precision 16-mixed, "
                           "activation_checkpoint or freeze")
    sync_batchnorm: bool | None = Field(None, description="TAO SegFormer's key: synchronize BatchNorm statistics "
                                                          "across DDP processes; empty: on whenever training runs "
                                                          "in more than one process")
    use_distributed_sampler: bool = Field(True, description="TAO SegFormer's key: each DDP process trains on its "
                                                            "own share of the images each epoch; false: every "
                                                            "process on all of them")
    tensorboard: TensorBoardConfig = section(TensorBoardConfig)
    verbose: bool = Field(False, description="Log the optimizer's parameter groups: their learning rate (lr, or "
                                             "lr * backbone_multiplier), weight decay and tensor counts")

    @field_validator("precision", mode="before")
    @classmethod
    def _lightning_precision(cls, v: Any) -> str:
        aliases = {"fp32": "32", "32": "32", "fp16": "16-mixed", "16": "16-mixed", "bf16": "bf16-mixed"}
        key = str(v).strip().lower()
        if key in ("32", "16-mixed", "bf16-mixed", "32-true", "16-true", "bf16-true", "64", "64-true"):
            return key
        if key in aliases:
            log.warning("train.precision %r normalized to Lightning's %r", v, aliases[key])
            return aliases[key]
        raise ValueError(f"unknown precision {v!r}; use 32, 16-mixed (fp16) or bf16-mixed")

