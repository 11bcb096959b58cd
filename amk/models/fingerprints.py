"""The fingerprint a load gives a model's weights, the name its cache entries are kept under: sha256 over its
config file as written (less the fields a transformers version or the load call changes), where the weights came
from, and every byte of its weight files."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from .checkpoint import WeightFiles, read_config_json, weight_files

# Fields that change with the transformers version or the load call, not with the model; kept out of
# the fingerprint so that it agrees between this machine and the GPU machine.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache")


def checkpoint_fingerprint(path: Path, files: WeightFiles | None = None) -> str:
    """The fingerprint of a checkpoint directory's model (what load_model(path).fingerprint is): sha256 over its
    config.json as written and every byte of its weight files. Hashed once a process while the files keep their
    sizes and modification times; a checkpoint saved again is hashed again. Raises CheckpointError as
    weight_files does."""
    if files is None:
        read_config_json(path)  # a broken config.json is named as load_model names it
        files = weight_files(path)
    listed = [path / "config.json"] + files.files
    stats = tuple((str(f), st.st_size, st.st_mtime_ns) for f in listed for st in [f.stat()])
    return _hashed_checkpoint(str(path.resolve()), stats)


@functools.lru_cache(maxsize=16)
def _hashed_checkpoint(path: str, stats: tuple) -> str:
    # `stats` (each file's name, size and mtime) is the cache key's part that a saving of the checkpoint changes
    h = _hasher(read_config_json(Path(path)), "path")
    _hash_files(h, [Path(f) for f, _, _ in stats])
    return h.hexdigest()


def _hasher(raw_config: dict, source: str):
    """sha256 seeded with the canonical config JSON and the source. It hashes the config file as written,
    not transformers' parsed config, which versions rewrite (e.g. rope_theta -> rope_parameters)."""
    d = dict(raw_config)
    for k in _VOLATILE_CONFIG_KEYS:
        d.pop(k, None)
    h = hashlib.sha256()
    h.update(json.dumps(d, sort_keys=True, default=str).encode())
    h.update(f"\0source={source}\0".encode())
    return h


def _hash_files(h, files: list[Path]) -> None:
    for f in files:
        content = hashlib.sha256()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                content.update(block)
        h.update(f"{f.name}\0{f.stat().st_size}\0{content.hexdigest()}\0".encode())
