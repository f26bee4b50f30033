"""The label map: category ids, names, thing/stuff and colors, and the contiguous id mapping."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oneformer.errors import DataError


@dataclass(frozen=True)
class Category:
    """One class of the label map."""

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]


@dataclass
class LabelMap:
    """Classes in training order; `index` maps a raw category id to its class index."""

    categories: list[Category]
    contiguous: bool = True
    aliases: dict[int, tuple[int, str]] = field(default_factory=dict)  # id -> (the id it trains as, its own name)
    index: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        if self.contiguous:
            self.index = {c.id: i for i, c in enumerate(self.categories)}
        else:
            self.index = {c.id: c.id for c in self.categories}
        for alias, (target, _) in self.aliases.items():  # SegFormer's mapping_class: read as the target's class
            self.index[alias] = self.index[target]

    @property
    def num_classes(self) -> int:
        """Classes the head must cover: N when contiguous, else the largest raw id + 1."""
        return len(self.categories) if self.contiguous else max(self.index.values()) + 1

    @property
    def names(self) -> list[str]:
        """Class names by class index (unused raw ids get a placeholder)."""
        out = [f"class_{i}" for i in range(self.num_classes)]
        for c in self.categories:
            out[self.index[c.id]] = c.name
        return out

    @property
    def thing_mask(self) -> np.ndarray:
        """Boolean per class index: True for things."""
        out = np.zeros(self.num_classes, dtype=bool)
        for c in self.categories:
            out[self.index[c.id]] = c.isthing
        return out

    @property
    def palette(self) -> np.ndarray:
        """RGB color per class index, uint8 [num_classes, 3]."""
        out = np.zeros((self.num_classes, 3), dtype=np.uint8)
        for c in self.categories:
            out[self.index[c.id]] = c.color
        return out

    def to_list(self) -> list[dict]:
        """Plain data for checkpoints and ONNX metadata (mapped ids as {id, name, alias_of})."""
        return [{"id": c.id, "name": c.name, "isthing": c.isthing, "color": list(c.color)} for c in self.categories] + [
            {"id": a, "name": name, "alias_of": target} for a, (target, name) in self.aliases.items()]

    @classmethod
    def from_list(cls, items: list[dict], contiguous: bool = True, source: str = "label map", min_id: int = 0
                  ) -> LabelMap:
        """Parse and validate `[{id, name, isthing, color}, ...]`; a user's file takes TAO's rule (min_id 1), a
        SegFormer palette or a stored map (checkpoint, model file) also id 0."""
        if not isinstance(items, list) or not items:
            raise DataError(f"{source}: expected a non-empty JSON list of {{id, name, isthing, color}}")
        cats, seen = [], set()
        aliases = {int(i["id"]): (int(i["alias_of"]), str(i.get("name", ""))) for i in items
                   if isinstance(i, dict) and "alias_of" in i}
        items = [i for i in items if not (isinstance(i, dict) and "alias_of" in i)]
        for n, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item or "name" not in item:
                raise DataError(f"{source}: entry {n} needs at least 'id' and 'name' (got {item!r})")
            cid = int(item["id"])
            if cid < min_id:
                raise DataError(f"{source}: category id {cid} ({item['name']!r}) must be > 0, as TAO requires")
            if cid in seen:
                raise DataError(f"{source}: category id {cid} appears twice; give each category its own id")
            seen.add(cid)
            color = item.get("color") or _auto_color(cid)
            cats.append(Category(cid, str(item["name"]), bool(item.get("isthing", True)), tuple(color)[:3]))
        if unknown := sorted(t for t, _ in aliases.values() if t not in seen):
            raise DataError(f"{source}: alias_of ids {unknown} name no category")
        return cls(cats, contiguous, aliases)

    @classmethod
    def read(cls, path: str | Path, contiguous: bool = True) -> LabelMap:
        """Read a label_map.json file."""
        p = Path(path)
        if not p.is_file():
            raise DataError(f"label map {p} does not exist (dataset.label_map)")
        try:
            items = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"dataset.label_map: {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}); fix the file or point dataset.label_map at TAO's label_map.json") from None
        if isinstance(items, dict) and "categories" in items:
            items = items["categories"]
        return cls.from_list(items, contiguous, f"dataset.label_map: {p}", min_id=1)

    @classmethod
    def from_palette(cls, palette: list, num_classes: int, contiguous: bool = True) -> LabelMap:
        """SegFormer's dataset.segment.palette (seg_class, label_id, rgb, mapping_class) as a label map whose ids are
        the mask values; a class mapped onto another trains as that one. Without a palette: classes
        0..num_classes-1 by mask value."""
        if not palette:
            return cls.from_list([{"id": i, "name": f"class_{i}", "isthing": False} for i in range(num_classes)],
                                 contiguous)
        by_name = {p.seg_class: p for p in palette}
        items = [{"id": p.label_id, "name": p.seg_class, "isthing": False, "color": p.rgb}
                 if (p.mapping_class or p.seg_class) == p.seg_class else
                 {"id": p.label_id, "name": p.seg_class, "alias_of": by_name[p.mapping_class].label_id}
                 for p in palette]
        return cls.from_list(items, contiguous, "dataset.segment.palette")

    def check_fits(self, num_classes: int, source: str, key: str = "model.sem_seg_head.num_classes") -> None:
        """Every class index must be < the network's class count (`key`)."""
        for c in self.categories:
            if self.index[c.id] >= num_classes:
                raise DataError(
                    f"{source}: category id {c.id} ({c.name!r}) maps to class {self.index[c.id]}, "
                    f"beyond {key}={num_classes}; raise num_classes to at least "
                    f"{self.num_classes} or set dataset.contiguous_id=true"
                )


def _auto_color(cid: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(cid)
    return tuple(int(x) for x in rng.integers(0, 256, 3))
