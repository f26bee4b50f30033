"""Pickles and torch.save files read with none of their code run: only tensors, storages, numpy arrays and plain
containers are built; every other object (TAO's OmegaConf config, a Detectron2 scheduler) becomes an inert
placeholder that keeps its data."""

from __future__ import annotations

import collections
import io
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

# Why a hand-written unpickler: torch.load(weights_only=True) refuses such a file outright at the first global that is
# not on torch's list (TAO's OmegaConf config, a Detectron2 LR scheduler, the numpy arrays of a .pkl); there is no way
# to have it stand something in and go on, and torch.serialization.add_safe_globals would build those classes for
# real, running their __reduce__ / __setstate__ code. What is needed is the weights, with everything else kept as
# inert data: RestrictedUnpickler resolves only the globals of _allowed_globals() (tensor and storage rebuilding,
# numpy arrays, plain containers) and turns every other one into a Placeholder, which calls nothing.


class Placeholder:
    """Stands in for an object of a class off the allow-list: keeps the global's name and the arguments, state and
    items the file gave it, as data; the class itself is never imported, so none of its code runs."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        """Record the arguments (pickle's REDUCE and NEWOBJ both arrive here)."""
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: __new__ recorded the arguments."""

    def __setstate__(self, state: Any) -> None:
        """Pickle's BUILD: keep the state instead of applying it."""
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        """Pickle's SETITEM(S) on a mapping subclass: keep the item."""
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        """Pickle's APPEND on a list subclass: keep the item."""
        self.items.append(value)

    def extend(self, values: Any) -> None:
        """Pickle's APPENDS on a list subclass: keep the items."""
        self.items.extend(values)

    def __repr__(self) -> str:
        """Say what was not built."""
        return f"<{self.global_name}: not built>"


_STAND_INS: dict[str, type[Placeholder]] = {}


def stand_in(module: str, name: str) -> type[Placeholder]:
    """The Placeholder class of one global (a class: pickle's NEWOBJ takes only those; one per name: identity)."""
    full = f"{module}.{name}"
    if full not in _STAND_INS:
        _STAND_INS[full] = type(f"Placeholder[{full}]", (Placeholder,), {"global_name": full, "__module__": __name__})
    return _STAND_INS[full]


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as pickle protocol 2 writes bytes (latin-1 text), limited to the codecs that do that."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "utf8"):
        raise pickle.UnpicklingError(f"the file asks for codec {encoding!r}; only latin-1 and utf-8 build bytes")
    return text.encode(encoding)


@dataclass(frozen=True)
class StorageKind:
    """A storage class named in a torch.save file (torch.FloatStorage, ...): its element type is all reading needs."""

    dtype: torch.dtype


def _allowed_globals() -> dict[str, Any]:
    """The globals a checkpoint's pickle may resolve: tensors, storages, numpy arrays and plain containers."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
    found: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        **{f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, bytearray, complex)},
        "_codecs.encode": _encode,
        "torch.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state"):
        if hasattr(torch._utils, name):
            found[f"torch._utils.{name}"] = getattr(torch._utils, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # the name numpy 1 and numpy 2 pickle under
        found[f"{module}._reconstruct"] = multiarray._reconstruct
        found[f"{module}.scalar"] = multiarray.scalar
    found.update({f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    with warnings.catch_warnings():  # reading a legacy storage class's dtype warns that TypedStorage is deprecated
        warnings.simplefilter("ignore")
        for name, value in vars(torch).items():
            if name.endswith("Storage") and isinstance(getattr(value, "dtype", None), torch.dtype):
                found[f"torch.{name}"] = found[f"torch.cuda.{name}"] = StorageKind(value.dtype)  # (older files: cuda)
    found["torch.UntypedStorage"] = found["torch.storage.UntypedStorage"] = StorageKind(torch.uint8)
    return found


ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Builds what ALLOWED names and a Placeholder for any other global."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object, or an inert stand-in: never an import of the file's choosing."""
        found = ALLOWED.get(f"{module}.{name}")
        return found if found is not None else stand_in(module, name)


def restricted_load(file: IO[bytes], **kwargs: Any) -> Any:
    """pickle.load through RestrictedUnpickler."""
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load is only ever called weights-only in this project (tests/oneformer/test_bad_inputs.py checks every call),
# so the restricted reading of a torch.save file does not go through torch.load(pickle_module=...): its zip format
# is read here, data.pkl through RestrictedUnpickler and each tensor storage from its data/<key> record.
TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first record of a legacy (pre-zip, PyTorch < 1.6) torch.save file


def _read_torch_zip(path: Path) -> Any:
    """A torch.save (zip) file's content through RestrictedUnpickler, storages read from the archive onto the CPU."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        pickles = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
        if not pickles:
            raise pickle.UnpicklingError("a zip archive without data.pkl: not a torch.save file")
        root = pickles[0][: -len("data.pkl")]
        order = archive.read(f"{root}byteorder").decode() if f"{root}byteorder" in names else "little"
        if order != sys.byteorder:
            raise pickle.UnpicklingError(f"its tensors are {order}-endian and this machine is {sys.byteorder}-endian")
        storages: dict[str, torch.storage.TypedStorage] = {}

        def persistent_load(pid: Any) -> torch.storage.TypedStorage:
            """A tensor storage the pickle refers to: ('storage', kind, key, location, numel)."""
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], StorageKind)
                    and f"{root}data/{pid[2]}" in names):
                raise pickle.UnpicklingError(f"a reference to something other than a stored tensor: {pid!r:.100}")
            key = str(pid[2])
            if key not in storages:
                data = bytearray(archive.read(f"{root}data/{key}"))
                raw = torch.frombuffer(data, dtype=torch.uint8).untyped_storage() if data else torch.UntypedStorage(0)
                storages[key] = torch.storage.TypedStorage(wrap_storage=raw, dtype=pid[1].dtype, _internal=True)
            return storages[key]

        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), encoding="utf-8")
        unpickler.persistent_load = persistent_load
        return unpickler.load()


def load_restricted(path: Path) -> Any:
    """A file's content, every object off the allow-list stood in for: a torch.save file (zip) or a plain pickle
    (Detectron2's .pkl); a legacy torch.save file is named as one (re-saving it is the way)."""
    if zipfile.is_zipfile(path):
        return _read_torch_zip(path)
    with path.open("rb") as f:
        raw = RestrictedUnpickler(f, encoding="latin1").load()  # latin1: Detectron2's Python 2 era pickles
    if isinstance(raw, int) and raw == TORCH_MAGIC:
        raise pickle.UnpicklingError("a legacy torch.save file (PyTorch < 1.6, not a zip archive), which is read "
                                     "weights-only or not at all; re-save it with a current torch.save")
    return raw


def stand_ins(obj: Any, budget: int = 100_000) -> list[str]:
    """The classes whose objects a loaded file held and that were stood in for (what was not built)."""
    found: set[str] = set()
    todo = [obj]
    while todo and budget > 0:
        budget -= 1
        item = todo.pop()
        if isinstance(item, Placeholder):
            found.add(item.global_name)
            todo += [*item.args, *item.kwargs.values(), item.state, *item.items]
        elif isinstance(item, dict):
            todo += list(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo += list(item)
    return sorted(found)
