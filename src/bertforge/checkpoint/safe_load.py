"""Loading checkpoints that unpickles nothing but data.

Composer and torch.distributed.checkpoint unpickle checkpoints with plain pickle, which runs whatever code a
crafted file names. ``check_checkpoint`` first reads every pickle of a checkpoint with a restricted unpickler
(torch's ``weights_only`` loader allowing only the few plain classes our checkpoints hold; an allow-list of
torch.distributed.checkpoint's own classes for a sharded checkpoint's index) and raises naming the file and the
class instead of running anything. `bertforge train` calls it on every checkpoint before Composer loads it (a
resume, ``checkpoint.load_path``, ``phase.after``, a rollback); export reads with the restricted loader itself.

torch and numpy are imported when a checkpoint is read, so the run folder layout that imports this module stays
light for the CLI and the torch-free planning code.
"""

from __future__ import annotations

import datetime
import io
import pickle
import re
from pathlib import Path

from bertforge.errors import CheckpointError


def _safe_globals() -> list:
    """What our checkpoints hold beyond tensors and plain containers: numpy arrays (RNG states), the torch version
    and a timedelta in Composer's metadata. Everything else is refused."""

    import numpy as np  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)
    from numpy._core.multiarray import _reconstruct  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)
    from torch.torch_version import TorchVersion  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)

    numeric = [type(np.dtype(kind)) for kind in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                                  "uint32", "uint64", "float16", "float32", "float64")]
    return [np.dtype, *numeric, np.ndarray, _reconstruct, TorchVersion, datetime.timedelta]


def load_checkpoint_file(path: Path):
    """A torch.save file (a monolithic checkpoint), read with the restricted unpickler."""
    return check_unpickle_safe(path, str(path))


def check_unpickle_safe(data: bytes | Path, source: str):
    """Unpickle ``data`` (a torch.save file or blob) with the restricted loader and return it; raise
    CheckpointError naming ``source`` and the refused class if it holds anything else."""
    import torch  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)

    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(stream, map_location="cpu", weights_only=True, mmap=not isinstance(data, bytes))
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(err))
        refused = f"it names {named.group(1) or named.group(2)}" if named else str(err).splitlines()[0]
        raise CheckpointError(f"{source}: refused to load: it holds more than tensors and plain data and could run "
                              f"code when unpickled ({refused}); load only checkpoints you trust") from None
    except (RuntimeError, EOFError) as err:  # torch's zip reader: a file cut off, or not a torch.save file
        raise CheckpointError(f"{source}: cannot be read as a checkpoint ({str(err).splitlines()[0]}); it is cut off "
                              f"(an interrupted save or copy) or not a torch checkpoint") from None


class _MetadataUnpickler(pickle.Unpickler):
    """The index file of a sharded checkpoint: torch.distributed.checkpoint's own metadata classes only."""

    _ALLOWED_MODULES = ("torch.distributed.checkpoint.", "torch.distributed._shard.")
    _ALLOWED = {("collections", "OrderedDict"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
                ("pathlib", "PosixPath")}

    def find_class(self, module: str, name: str):
        import torch  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)

        if module.startswith(self._ALLOWED_MODULES) or (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                        torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def _read_metadata(path: Path):
    try:
        with path.open("rb") as fh:
            return _MetadataUnpickler(fh).load()
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused to load, it names {err}; load only checkpoints you trust") from None


def check_sharded_checkpoint(directory: Path) -> None:
    """Every pickle of a sharded checkpoint: its index, then every item its index lists."""
    metadata = _read_metadata(directory / ".metadata")
    specs: dict[str, list[tuple[int, int]]] = {}
    for info in metadata.storage_data.values():
        specs.setdefault(info.relative_path, []).append((info.offset, info.length))
    for name, items in specs.items():
        with (directory / name).open("rb") as fh:
            for offset, length in items:
                fh.seek(offset)
                check_unpickle_safe(fh.read(length), f"{directory / name} (bytes {offset}-{offset + length})")


def check_checkpoint(path: Path) -> None:
    """A monolithic checkpoint or a sharded directory holds nothing that could run code when loaded."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    if path.is_dir():
        check_sharded_checkpoint(path)
    else:
        load_checkpoint_file(path)
