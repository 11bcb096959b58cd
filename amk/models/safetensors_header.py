"""A safetensors file's header, read without loading its data, and checked against the bytes the file holds.

Layout (https://github.com/huggingface/safetensors, "Format"): 8 bytes little-endian header length N, N bytes of
JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data; offsets count from
the end of the header. A tensor of `shape` and `dtype` takes prod(shape) * bits / 8 bytes there.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from amk.schedule.errors import CheckpointError

HEADER_LIMIT = 100 << 20  # the safetensors reader's own cap on a header
# bits an element of each safetensors dtype takes (its Rust Dtype::bitsize); a name not here is left to the dtype
# check, which refuses every tensor that is not a dense float
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
              "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
              "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}


def safetensors_header(file: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets} of a safetensors file, after checking that the file holds
    exactly the bytes its header describes and that each tensor's byte range is the size its shape and dtype
    give. Raises CheckpointError otherwise, also for a file that cannot be opened (a dangling symlink or a symlink
    loop, a directory so named, no read permission)."""
    try:
        return _read(file)
    except OSError as e:
        raise CheckpointError(file, f"cannot be read: {e.strerror or e}") from None


def _read(file: Path) -> dict[str, dict]:
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(file, f"truncated: {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > HEADER_LIMIT or 8 + n > size:
            raise CheckpointError(file, f"truncated or not safetensors: the header claims {n} bytes, the file holds "
                                  f"{size}")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(file, f"not safetensors: the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(file, "not safetensors: the header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = 0
    for name, t in tensors.items():
        try:
            begin, stop = t["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(file, "not safetensors: a tensor without data_offsets", field=name) from None
        _check_span(file, name, t, begin, stop)
        end = max(end, int(stop))
    if 8 + n + end != size:
        what = "truncated" if 8 + n + end > size else "longer than its header describes"
        raise CheckpointError(file, f"{what}: the header places {end} bytes of tensor data after {8 + n} bytes of "
                              f"header, the file holds {size} bytes")
    return tensors


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_span(file: Path, name: str, entry: dict, begin, stop) -> None:
    """CheckpointError naming the file and tensor where its header entry contradicts itself: a shape and dtype
    whose size is not the byte range data_offsets give. Such a file is corrupt; read on, its tensor's shape would
    be compared with config.json and blamed on a config field, as if the weights were of another model (the
    safetensors library refuses the file when it loads)."""
    shape = entry.get("shape")
    if not _is_count(begin) or not _is_count(stop) or stop < begin:
        raise CheckpointError(file, f"corrupt: data_offsets {[begin, stop]} is no byte range", field=name)
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(file, f"corrupt: shape {json.dumps(shape)} is not a list of sizes", field=name)
    bits = DTYPE_BITS.get(entry.get("dtype"))
    if bits is None:
        return
    want = math.prod(shape) * bits
    if want != (stop - begin) * 8:
        need = f"{want // 8}" if want % 8 == 0 else f"{want / 8}"
        raise CheckpointError(file, f"corrupt: the header gives it shape {shape} of {entry['dtype']} ({need} bytes), "
                              f"but data_offsets [{begin}, {stop}] span {stop - begin} bytes", field=name)
