"""A checkpoint's weight files, picked as transformers picks them, and the file that holds each tensor.

transformers loads the shards model.safetensors.index.json names, else model.safetensors, else pytorch_model*.bin.
Each safetensors file's header is read and checked whole (safetensors_header.py), and an index is checked against
the shards' headers: every problem is a CheckpointError naming the file, and the index's weight_map where it is to
blame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from amk.schedule.errors import CheckpointError

from .safetensors_header import safetensors_header

# the weight files transformers looks for first, in its order (index, then single file)
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_JSON_KINDS = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


@dataclass
class WeightFiles:
    files: list[Path]  # every file transformers may read weights from (hashed into the fingerprint)
    keys: dict[str, Path]  # tensor name -> safetensors file holding it (empty for .bin checkpoints)
    # tensor name -> its safetensors header entry ({dtype, shape, data_offsets}), read with `keys`
    headers: dict[str, dict] = field(default_factory=dict)


def weight_files(path: Path) -> WeightFiles:
    """The checkpoint's weight files, picked as transformers picks them: the shards model.safetensors.index.json's
    weight_map names, else model.safetensors alone, else pytorch_model*.bin, else (no name transformers looks for)
    every *.safetensors file there. Other safetensors files beside the picked ones (an old.safetensors of another
    model) are neither read nor hashed. Each safetensors file is checked whole. Raises CheckpointError for a
    directory without weights or with both model.safetensors and an index, a malformed index (naming it and its
    weight_map), an index naming a missing file or a shard that does not hold the tensor it maps there, or a file
    cut short."""
    index, single = path / _INDEX, path / _SINGLE
    if index.is_file() and single.exists():
        # transformers loads the single file and never reads the index: checked and hashed, the shards would
        # stand for weights that do not run
        raise CheckpointError(path, f"holds both {single.name} and {index.name} (two sets of weights; transformers "
                                    f"loads {single.name}): keep one")
    if index.is_file():
        shards = _index_shards(index)
        keys, headers = _tensor_files(shards)
        _check_index_holds(index, keys)
        return WeightFiles([index] + shards, keys, headers)
    if single.exists():
        return WeightFiles([single], *_tensor_files([single]))
    bins = sorted(path.glob("pytorch_model*.bin")) + sorted(path.glob("pytorch_model.bin.index.json"))
    if bins:  # transformers' next choice after the two safetensors names
        return WeightFiles(bins, {})
    # names transformers does not look for: still read, so that weights=False sizes the model from them
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(path, f"holds no weights: no {single.name}, {index.name}, pytorch_model.bin or other "
                                    "*.safetensors next to config.json")
    return WeightFiles(shards, *_tensor_files(shards))


def _json_kind(value) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _tensor_files(shards: list[Path]) -> tuple[dict[str, Path], dict[str, dict]]:
    """Tensor name -> the safetensors file holding it, and tensor name -> its header entry ({} where the entry is no
    object), each file's header read once. Raises CheckpointError as safetensors_header does."""
    keys: dict[str, Path] = {}
    headers: dict[str, dict] = {}
    for f in shards:
        for name, entry in safetensors_header(f).items():
            keys[name] = f
            headers[name] = entry if isinstance(entry, dict) else {}
    return keys, headers


def _index_shards(index: Path) -> list[Path]:
    """The distinct files the index's weight_map names, sorted. Raises CheckpointError naming the index and its
    weight_map when the map is empty or maps a tensor to anything but a file name, and naming the shard when the
    directory lacks it."""
    weight_map = _read_weight_map(index)
    if not weight_map:
        # shards beside an empty map are not loaded: transformers reads only the files the map names
        raise CheckpointError(index, "is empty: it names no tensors and no shard files to load them from",
                              field="weight_map")
    for tensor, file in weight_map.items():
        if not isinstance(file, str) or not file.strip():
            raise CheckpointError(index, f"maps {tensor!r} to {json.dumps(file)}, not to a shard's file name",
                                  field="weight_map")
    by_file: dict[Path, list[str]] = {}
    for tensor, file in weight_map.items():
        by_file.setdefault(index.parent / file, []).append(tensor)
    for f, tensors in sorted(by_file.items()):
        if not f.is_file():
            raise CheckpointError(f, f"named by {index.name}'s weight_map (for {len(tensors)} tensor(s), "
                                     f"{tensors[0]} first) but not in the directory")
    return sorted(by_file)


def _check_index_holds(index: Path, keys: dict[str, Path]) -> None:
    """CheckpointError naming the index and its weight_map where it maps a tensor to a shard whose header does not
    hold it (`keys`: tensor name -> the shard that does, _tensor_files): transformers reads each tensor from the
    shard the map names, and would report it missing and fill it by initialisation."""
    for tensor, file in _read_weight_map(index).items():
        named = index.parent / file
        if keys.get(tensor) != named and not (tensor in keys and _holds(named, tensor)):
            where = f" (it is in {keys[tensor].name})" if tensor in keys else " (nor does any shard it names)"
            raise CheckpointError(index, f"maps {tensor!r} to {file}, whose header does not hold it{where}",
                                  field="weight_map")


def _holds(file: Path, tensor: str) -> bool:
    return tensor in safetensors_header(file)


def _read_weight_map(index: Path) -> dict:
    """The index's weight_map as written. Raises CheckpointError naming the index when it cannot be read, is not a
    JSON object, or has no weight_map object (then naming the field)."""
    try:
        raw = json.loads(index.read_text())
    except OSError as e:
        raise CheckpointError(index, f"cannot be read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(index, f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(index, f"holds a JSON {_json_kind(raw)}, not a safetensors index (an object with a "
                                     "weight_map)")
    if "weight_map" not in raw:
        raise CheckpointError(index, "missing: a safetensors index maps each tensor name to its shard's file name",
                              field="weight_map")
    weight_map = raw["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(index, f"is a JSON {_json_kind(weight_map)}, not an object mapping each tensor name "
                                     "to its shard's file name", field="weight_map")
    return weight_map
