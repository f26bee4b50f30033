"""Torch datasets (training with task-conditioned targets, evaluation) and the LightningDataModule."""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from oneformer.data.labelmap import LabelMap
from oneformer.data.loaders import worker_init
from oneformer.data.readers import Record, labels_from_annotations, load_target, read_image, read_split, stage_input
from oneformer.data.targets import build_targets, sample_task, semantic_map
from oneformer.data.tokenizer import TextTable
from oneformer.data.transforms import eval_size, normalize, pad_divisible, resize_pair, train_transform
from oneformer.errors import DataError
from oneformer.spec import DatasetConfig, ExperimentSpec

log = logging.getLogger(__name__)


def read_labels(spec: ExperimentSpec, check: bool = True) -> LabelMap:
    """The label map from dataset.label_map, else from the training annotations' categories."""
    ds = spec.dataset
    if ds.label_map:
        labels = LabelMap.read(stage_input(ds.label_map, "dataset.label_map"), ds.contiguous_id)
    else:
        source = ds.train.annotations or ds.val.annotations
        if not source:
            raise DataError("dataset.label_map is not set and no annotations name the categories")
        key = "dataset.train.annotations" if ds.train.annotations else "dataset.val.annotations"
        labels = labels_from_annotations(source, ds.contiguous_id, key)
    if check:
        labels.check_fits(spec.model.sem_seg_head.num_classes, "dataset.label_map")
    return labels


def load_pair(rec: Record, labels: LabelMap) -> tuple[np.ndarray, np.ndarray, list]:
    """Image, segment-id map and segments of one record; a file that cannot be decoded, or an image whose mask has
    another size, is an error naming the files (validation before training normally finds these first)."""
    try:
        image = read_image(rec.image)
        ids, segments = load_target(rec, labels)
    except OSError as exc:
        raise DataError(f"cannot decode {rec.image} or its mask ({exc}); run `oneformer check --deep`") from None
    if image.shape[:2] != ids.shape:
        raise DataError(f"image {rec.image} is {image.shape[1]}x{image.shape[0]} but its mask "
                        f"{rec.panoptic_png or rec.semantic_png or 'annotation'} is {ids.shape[1]}x{ids.shape[0]}; "
                        "an image and its mask must be the same size")
    return image, ids, segments


def read_splits(spec: ExperimentSpec, labels: LabelMap, deep: bool = False) -> tuple[list[Record], list[Record]]:
    """The training and validation records, validated (every file decoded with `deep`)."""
    ds = spec.dataset
    train = read_split(ds.train.annotations, ds.train.images, ds.train.panoptic, ds.train.format, labels,
                       "dataset.train", deep)
    val = (read_split(ds.val.annotations, ds.val.images, ds.val.panoptic, ds.val.format, labels, "dataset.val", deep)
           if ds.val.annotations else [])
    return train, val


class TrainDataset(Dataset):
    """Augmented images with targets for a task sampled per image (OneFormer's joint training)."""

    def __init__(self, records: list[Record], labels: LabelMap, cfg: DatasetConfig, text: TextTable,
                 num_text: int, size_divisibility: int) -> None:
        self.records, self.labels, self.cfg, self.text = records, labels, cfg, text
        self.num_text, self.divisor = num_text, size_divisibility
        p = cfg.task_probability
        self.probs = (p.semantic, p.instance, p.panoptic)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        rec = self.records[i]
        image, ids, segments = load_pair(rec, self.labels)
        image, ids, valid = train_transform(image, ids, self.cfg.augmentation, rng)
        task, masks, classes = build_targets(ids, segments, sample_task(self.probs, rng))
        pixels = pad_divisible(normalize(image, self.cfg.pixel_mean, self.cfg.pixel_std), self.divisor)
        h, w = pixels.shape[-2:]
        masks = pad_divisible(masks, self.divisor)
        valid_t = pad_divisible(torch.from_numpy(valid)[None].float(), self.divisor)[0]
        return {
            "pixel_values": pixels,
            "pixel_mask": valid_t.long(),
            "mask_labels": masks[:, :h, :w],
            "class_labels": classes,
            "task_inputs": self.text.task_ids[task],
            "text_inputs": self.text.text_inputs(task, classes, self.num_text),
            "task": task,
        }


class EvalDataset(Dataset):
    """Images resized for evaluation, with the semantic ground truth at the original size."""

    def __init__(self, records: list[Record], labels: LabelMap, cfg: DatasetConfig, text: TextTable | None,
                 num_text: int, size_divisibility: int, with_targets: bool = True) -> None:
        self.records, self.labels, self.cfg, self.text = records, labels, cfg, text
        self.num_text, self.divisor, self.with_targets = num_text, size_divisibility, with_targets

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        image, ids, segments = load_pair(rec, self.labels)
        h0, w0 = image.shape[:2]
        h, w = eval_size(h0, w0, self.cfg.augmentation)
        small, small_ids = resize_pair(image, ids, h, w)
        pixels = pad_divisible(normalize(small, self.cfg.pixel_mean, self.cfg.pixel_std), self.divisor)
        item = {
            "pixel_values": pixels,
            "valid_hw": (h, w),
            "orig_hw": (h0, w0),
            "index": i,
            "semantic": torch.from_numpy(semantic_map(ids, segments, self.cfg.ignore_value)),
        }
        if self.with_targets and self.text is not None:
            _, masks, classes = build_targets(small_ids, segments, "semantic")
            item["mask_labels"] = pad_divisible(masks, self.divisor)
            item["class_labels"] = classes
            item["task_inputs"] = self.text.task_ids["semantic"]
        return item


LIST_KEYS = ("mask_labels", "class_labels", "valid_hw", "orig_hw", "index", "semantic", "task")


def collate(items: list[dict]) -> dict:
    """Stack images (padding to the largest in the batch); keep per-image targets as lists."""
    hmax = max(it["pixel_values"].shape[-2] for it in items)
    wmax = max(it["pixel_values"].shape[-1] for it in items)
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key in LIST_KEYS:
            if key == "mask_labels":
                values = [torch.nn.functional.pad(v, (0, wmax - v.shape[-1], 0, hmax - v.shape[-2])) for v in values]
            out[key] = values
        elif key in ("pixel_values", "pixel_mask"):
            out[key] = torch.stack(
                [torch.nn.functional.pad(v, (0, wmax - v.shape[-1], 0, hmax - v.shape[-2])) for v in values]
            )
        else:
            out[key] = torch.stack(values)
    return out


class SegmentationDataModule(pl.LightningDataModule):
    """Reads and validates the splits once, then serves train and validation loaders."""

    def __init__(self, spec: ExperimentSpec, labels: LabelMap, text: TextTable, num_text: int,
                 splits: tuple[list[Record], list[Record]] | None = None) -> None:
        super().__init__()
        self.spec, self.labels, self.text, self.num_text = spec, labels, text, num_text
        self.train_records, self.val_records = splits if splits is not None else read_splits(spec, labels)
        self.divisor = spec.model.one_former.size_divisibility

    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of this process in a DDP run; (0, 1) alone."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        split = self.spec.dataset.train
        data = TrainDataset(self.train_records, self.labels, self.spec.dataset, self.text, self.num_text, self.divisor)
        rank, world = self._shard()
        sampler = DistributedSampler(data, world, rank, shuffle=True, seed=self.spec.train.seed) if world > 1 \
            else None
        return DataLoader(data, batch_size=split.batch_size, shuffle=sampler is None, sampler=sampler,
                          num_workers=split.num_workers, collate_fn=collate,
                          drop_last=len(data) // world > split.batch_size, persistent_workers=split.num_workers > 0,
                          worker_init_fn=worker_init)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_records:
            return []
        split = self.spec.dataset.val
        data = EvalDataset(self.val_records, self.labels, self.spec.dataset, self.text, self.num_text, self.divisor)
        rank, world = self._shard()
        # every image on exactly one process (torch's DistributedSampler pads with repeats, which the gathered
        # confusion matrix would count twice)
        return DataLoader(data, batch_size=split.batch_size, sampler=list(range(rank, len(data), world)),
                          num_workers=split.num_workers, collate_fn=collate, persistent_workers=split.num_workers > 0,
                          worker_init_fn=worker_init)
