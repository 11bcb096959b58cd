"""A tensor entry's payload: a dict of named tensors as the bytes the cache stores (torch.save, on the CPU), and
those bytes read back and checked (a dict of finite tensors, with the shapes and dtypes the caller expects). torch
is imported on use, so that the cache's worker processes start without it."""

from __future__ import annotations

import io

from amk.cache_entry import CorruptEntryError


def tensor_bytes(tensors: dict) -> bytes:
    import torch
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor entry {name!r}: need str -> torch.Tensor, got {type(t).__name__}")
    buf = io.BytesIO()
    # clone() so a view does not drag its whole base storage into the file.
    torch.save({name: t.detach().to("cpu").clone() for name, t in tensors.items()}, buf)
    return buf.getvalue()


def load_tensors(payload: bytes) -> dict:
    """The dict of tensors `payload` holds; CorruptEntryError for anything else, or a non-finite value."""
    import torch
    obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(t, torch.Tensor) for t in obj.values()):
        raise CorruptEntryError(f"tensor entry is {type(obj).__name__}, not a dict of tensors")
    for name, t in obj.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise CorruptEntryError(f"tensor {name!r} has non-finite values")
    return obj


def check_expected(tensors: dict, expect: dict | None) -> None:
    """CorruptEntryError unless `tensors` are those `expect` names ({name: (shape, dtype)}; None: any)."""
    if expect is not None:
        got = {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}
        want = {n: (tuple(shape), dtype) for n, (shape, dtype) in expect.items()}
        if got != want:
            raise CorruptEntryError(f"tensors {got} differ from expected {want}")
