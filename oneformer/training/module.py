"""The LightningModule: the network's own losses for training (OneFormer, Mask2Former, SegFormer), semantic mIoU
for validation."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from oneformer.data.labelmap import LabelMap
from oneformer.evaluation.metrics import ConfusionMatrix
from oneformer.model.checkpoint import META_KEY, checkpoint_meta
from oneformer.model.network import Network, build_network, forward, set_training_mode, training_loss
from oneformer.runtime.postprocess import semantic_scores, to_image_size
from oneformer.spec import ExperimentSpec
from oneformer.training.optim import build_optimizer, build_schedule, describe_groups

log = logging.getLogger(__name__)


class SegmentationModule(pl.LightningModule):
    """Wraps the network; checkpoints carry its config, label map and spec so they stand alone."""

    def __init__(self, spec: ExperimentSpec, config, labels: LabelMap) -> None:  # noqa: ANN001
        super().__init__()
        self.spec, self.labels = spec, labels
        self.net: Network = build_network(config)
        self.confusion = ConfusionMatrix(labels.num_classes, spec.dataset.ignore_value)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = training_loss(self.net, batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["pixel_values"]))
        return loss

    # ------------------------------------------------------------------ validation
    def on_validation_model_eval(self) -> None:
        set_training_mode(self.net, False)

    def on_validation_model_train(self) -> None:
        set_training_mode(self.net, True)

    def on_validation_epoch_start(self) -> None:
        self.confusion = ConfusionMatrix(self.labels.num_classes, self.spec.dataset.ignore_value)
        self.val_images, self.val_loss_sum = 0, 0.0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        targets = {k: batch[k] for k in ("mask_labels", "class_labels") if k in batch}
        out = forward(self.net, batch["pixel_values"], batch.get("task_inputs"), **targets)
        n = len(batch["index"])
        self.val_images += n
        input_hw = tuple(batch["pixel_values"].shape[-2:])
        losses = []
        for i in range(n):  # the same semantic path as evaluate and every exported model
            scores = out["scores"][i] if "scores" in out else semantic_scores(out["class_logits"][i],
                                                                             out["mask_logits"][i])
            full = to_image_size(scores.float().cpu(), input_hw, batch["valid_hw"][i], batch["orig_hw"][i])
            truth = batch["semantic"][i]
            if "loss" not in out:  # SegFormer: its loss on the image at its own size
                loss = F.cross_entropy(full[None], truth[None], ignore_index=self.spec.dataset.ignore_value)
                losses.append(float(loss.nan_to_num(0.0)))
            self.confusion.update(full.argmax(0).to(torch.int32).numpy(), truth.numpy())
        self.val_loss_sum += float(out["loss"]) * n if "loss" in out else sum(losses)

    def on_validation_epoch_end(self) -> None:
        mat = torch.as_tensor(self.confusion.mat, device=self.device)
        totals = torch.tensor([getattr(self, "val_images", 0), getattr(self, "val_loss_sum", 0.0)],
                              dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:  # each image was scored on one process: the sums are the whole split's
            # (gathered here, once per epoch on every process, even one that had no batch: a per-step
            # sync_dist would leave such a process out and hang the others)
            mat, totals = self.all_gather(mat).sum(0), self.all_gather(totals).sum(0)
        self.confusion.mat = mat.cpu().numpy()
        seen = float(totals[0])
        summary = self.confusion.summary()
        self.log("mIoU", summary["mIoU"], prog_bar=True, sync_dist=False)
        if self.spec.arch == "segformer":  # TAO SegFormer's status.json KPIs (what its AutoML reads)
            self.log("val_miou", summary["mIoU"], sync_dist=False)
            self.log("val_acc", summary["pixel_accuracy"], sync_dist=False)
        self.log("val_images", seen, sync_dist=False)
        if seen:
            self.log("val_loss", float(totals[1]) / seen, sync_dist=False)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):  # noqa: ANN201 - Lightning's return shape
        opt = self.spec.train.optim
        optimizer = build_optimizer(self.net, opt)
        if self.spec.train.verbose:
            log.info("train.verbose: optimizer %s\n%s", opt.type, "\n".join(describe_groups(optimizer, opt)))
        schedule = build_schedule(optimizer, opt, int(self.trainer.estimated_stepping_batches),
                                  self.spec.train.num_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint content
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[META_KEY] = checkpoint_meta(self.net, self.labels, self.spec.model_dump(mode="json"),
                                               {k: float(v) for k, v in self.trainer.callback_metrics.items()})
