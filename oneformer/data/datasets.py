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
    if spec.arch == "segformer" and not ds.label_map:
        labels = LabelMap.from_palette(ds.segment.palette or [], ds.segment.num_classes, ds.contiguous_id)
    elif ds.label_map:
        labels = LabelMap.read(stage_input(ds.label_map, "dataset.label_map"), ds.contiguous_id)
    else:
        source = ds.train.annotations or ds.val.annotations
        if not source:
            raise DataError("dataset.label_map is not set and no annotations name the categories")
        key = "dataset.train.annotations" if ds.train.annotations else "dataset.val.annotations"
        labels = labels_from_annotations(source, ds.contiguous_id, key)
    if check:
        labels.check_fits(spec.num_classes, "dataset.label_map", spec.num_classes_key)
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
    binary = spec.binary_masks
    train = read_split(ds.train.annotations, ds.train.images, ds.train.panoptic, ds.train.format, labels,
                       "dataset.train", deep, ds.ignore_value, binary)
    val = (read_split(ds.val.annotations, ds.val.images, ds.val.panoptic, ds.val.format, labels, "dataset.val", deep,
                      ds.ignore_value, binary) if ds.val.annotations else [])
    return train, val


def task_weights(spec: ExperimentSpec) -> tuple[float, float, float] | None:
    """How often each task's targets are built per training image: OneFormer samples one per image
    (dataset.task_probability), Mask2Former trains its model.mode only; None: SegFormer's per-pixel labels."""
    if spec.arch == "segformer":
        return None
    if spec.arch == "mask2former":
        return tuple(float(spec.model.mode == t) for t in ("semantic", "instance", "panoptic"))
    p = spec.dataset.task_probability
    return (p.semantic, p.instance, p.panoptic)


class TrainDataset(Dataset):
    """Augmented images with the network's targets: masks and classes of a task sampled per image (OneFormer's joint
    training, with its text), of the one task of a Mask2Former model, or SegFormer's per-pixel labels."""

    def __init__(self, records: list[Record], labels: LabelMap, cfg: DatasetConfig, text: TextTable | None,
                 num_text: int, size_divisibility: int,
                 weights: tuple[float, float, float] | None = None) -> None:
        self.records, self.labels, self.cfg, self.text = records, labels, cfg, text
        self.num_text, self.divisor = num_text, size_divisibility
        p = cfg.task_probability
        self.probs = weights if weights is not None else (p.semantic, p.instance, p.panoptic)
        self.per_pixel = weights is None and text is None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        rec = self.records[i]
        image, ids, segments = load_pair(rec, self.labels)
        image, ids, valid = train_transform(image, ids, self.cfg.augmentation, rng)
        pixels = pad_divisible(normalize(image, self.cfg.pixel_mean, self.cfg.pixel_std), self.divisor)
        h, w = pixels.shape[-2:]
        if self.per_pixel:
            sem = torch.from_numpy(semantic_map(ids, segments, self.cfg.ignore_value))
            labels = torch.full((h, w), self.cfg.ignore_value, dtype=torch.long)
            labels[: sem.shape[0], : sem.shape[1]] = sem
            return {"pixel_values": pixels, "labels": labels, "ignore_value": self.cfg.ignore_value}
        task, masks, classes = build_targets(ids, segments, sample_task(self.probs, rng))
        masks = pad_divisible(masks, self.divisor)
        valid_t = pad_divisible(torch.from_numpy(valid)[None].float(), self.divisor)[0]
        item = {"pixel_values": pixels, "pixel_mask": valid_t.long(), "mask_labels": masks[:, :h, :w],
                "class_labels": classes, "task": task}
        if self.text is not None:
            item["task_inputs"] = self.text.task_ids[task]
            item["text_inputs"] = self.text.text_inputs(task, classes, self.num_text)
        return item


class EvalDataset(Dataset):
    """Images resized for evaluation, with the semantic ground truth at the original size."""

    def __init__(self, records: list[Record], labels: LabelMap, cfg: DatasetConfig, text: TextTable | None,
                 num_text: int, size_divisibility: int, with_targets: bool = True) -> None:
        """`with_targets`: the masks and classes a query-based network's validation loss needs (OneFormer's with
        its task text)."""
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
        if self.with_targets:
            _, masks, classes = build_targets(small_ids, segments, "semantic")
            item["mask_labels"] = pad_divisible(masks, self.divisor)
            item["class_labels"] = classes
            if self.text is not None:
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
        elif key == "labels":  # SegFormer's per-pixel labels, padded as void
            out[key] = torch.stack([torch.nn.functional.pad(v, (0, wmax - v.shape[-1], 0, hmax - v.shape[-2]),
                                                            value=items[0]["ignore_value"]) for v in values])
        elif key == "ignore_value":
            continue
        else:
            out[key] = torch.stack(values)
    return out


class SegmentationDataModule(pl.LightningDataModule):
    """Reads and validates the splits once, then serves train and validation loaders."""

    def __init__(self, spec: ExperimentSpec, labels: LabelMap, text: TextTable | None, num_text: int,
                 splits: tuple[list[Record], list[Record]] | None = None) -> None:
        """`text`: OneFormer's task and class text; None for Mask2Former and SegFormer."""
        super().__init__()
        self.spec, self.labels, self.text, self.num_text = spec, labels, text, num_text
        self.train_records, self.val_records = splits if splits is not None else read_splits(spec, labels)
        self.divisor = spec.size_divisibility

    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of this process in a DDP run; (0, 1) alone."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        split = self.spec.dataset.train
        data = TrainDataset(self.train_records, self.labels, self.spec.dataset, self.text, self.num_text, self.divisor,
                            task_weights(self.spec))
        rank, world = self._shard()
        shard = world > 1 and self.spec.train.use_distributed_sampler
        sampler = DistributedSampler(data, world, rank, shuffle=True, seed=self.spec.train.seed) if shard else None
        return DataLoader(data, batch_size=split.batch_size, shuffle=sampler is None, sampler=sampler,
                          num_workers=split.num_workers, collate_fn=collate,
                          drop_last=len(data) // (world if shard else 1) > split.batch_size,
                          persistent_workers=split.num_workers > 0,
                          worker_init_fn=worker_init)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_records:
            return []
        split = self.spec.dataset.val
        data = EvalDataset(self.val_records, self.labels, self.spec.dataset, self.text, self.num_text, self.divisor,
                           with_targets=self.spec.arch != "segformer")
        rank, world = self._shard()
        # every image on exactly one process (torch's DistributedSampler pads with repeats, which the gathered
        # confusion matrix would count twice)
        return DataLoader(data, batch_size=split.batch_size, sampler=list(range(rank, len(data), world)),
                          num_workers=split.num_workers, collate_fn=collate, persistent_workers=split.num_workers > 0,
                          worker_init_fn=worker_init)
