"""Edits to a loaded model's weights after load, seen cheaply: amk.models.Model follows them so that its
fingerprint (every cache key's name for the weights) is that of the weights its eager module holds now."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch


class WeightsSeen:
    """What a module's weights were when last looked at, cheaply: each parameter's and buffer's identity (a weak
    reference: a replaced Parameter, or a replaced submodule's, is another object), its version counter (which
    every in-place op on it or a view of it bumps: mul_, copy_, load_state_dict) and its data pointer (`p.data = t`
    swaps the storage under the same object). A write that bypasses the counter (through `p.data`, a numpy view) is
    not seen. Checking walks the module tree and reads no weight (toy: about 15 us; smollm2-135m's 30 layers, 275
    tensors: about 0.2 ms)."""

    def __init__(self, module) -> None:
        self._entries = [(weakref.ref(t), _version(t), t.data_ptr()) for t in _tensors(module)]
        self._named = {name: (weakref.ref(t), _version(t), t.data_ptr()) for name, t in _named_tensors(module)}

    def holds(self, module) -> bool:
        """Whether `module`'s tensors are those recorded, unedited since."""
        tensors = _tensors(module)
        return len(tensors) == len(self._entries) and not any(map(_differs, self._entries, tensors))

    def changed(self, module) -> list[str]:
        """The names of `module`'s tensors edited, replaced, added or removed since recorded (for a message)."""
        now = dict(_named_tensors(module))
        return [name for name in sorted(now.keys() | self._named.keys())
                if name not in now or name not in self._named or _differs(self._named[name], now[name])]


def _differs(entry: tuple, tensor) -> bool:
    """Whether `tensor` is not the one `entry` (weak reference, version, data pointer) recorded, as it was."""
    ref, version, ptr = entry
    return ref() is not tensor or _version(tensor) != version or tensor.data_ptr() != ptr


def _named_tensors(module) -> list[tuple[str, Any]]:
    """Every parameter and buffer of `module` (None: none) by name, tied ones once, in the module's order."""
    if module is None:
        return []
    return [*module.named_parameters(), *module.named_buffers()]


def _tensors(module) -> list:
    """Every parameter and buffer of `module` (None: none), a tied one once for each module holding it. A walk of the
    modules' own dicts: named_parameters() builds every dotted name and costs 4 times as much (it runs on every
    fingerprint read)."""
    out: list = []
    stack = [] if module is None else [module]
    while stack:
        m = stack.pop()
        if m is not None:  # a child registered as None
            out += m._parameters.values()
            out += m._buffers.values()
            stack += m._modules.values()
    return [t for t in out if t is not None]  # a parameter or buffer registered as None (bias=False)


def _version(tensor) -> int:
    # an inference tensor (made under torch.inference_mode) has no version counter: in-place writes to it go unseen
    return -1 if tensor.is_inference() else tensor._version


def edited_fingerprint(base: str, module) -> str:
    """The fingerprint of weights edited after load: sha256 over `base` (the fingerprint the model was made with:
    its config, source and load-time weights), a tag no load writes, and each parameter's and buffer's name, dtype,
    shape and bytes. Its input is laid out unlike any load's, so it is no unedited model's fingerprint. Reads every
    weight once (toy: about 1 ms; llama-3.2-1b fp32, 5 GB: seconds), copying each off a GPU."""
    h = hashlib.sha256(f"{base}\0source=edited\0".encode())
    for name, t in _named_tensors(module):
        t = t.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()
