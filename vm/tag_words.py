"""The tagged streams' words in the ReferenceVM (build.tagged_residual, build.tagged_hidden; schedule/tags.py).

The CUDA VM stores each value of a tagged stream (x; the MLP's hidden row) also as one 8-byte word, its fp32 bits
low and its tag high, and a tagged read takes its values from the words, spinning until each carries the tag it
expects. Here a word is two int32 elements of the stream's words buffer, (bits, tag), as the little-endian word
lies in memory; a tagged read takes its values from them too, and where a word carries another tag it raises
TaggedReadError, naming the task, where the CUDA VM would spin until its time-out. So every verify on the
ReferenceVM runs the program's tags: which version each task writes and reads, and where.
"""

from __future__ import annotations

import torch

from amk.schedule.errors import TaggedReadError

_STREAMS = {"X": "x", "H": "the MLP hidden row"}


class TagWords:
    """The words of the streams a program's build tags (X_TAGS / H_TAGS, X_VERSIONS / H_VERSIONS), over the
    ReferenceVM's memory. `epoch`: this step's, counted from 1 as the CUDA VM's (set by the runner each step)."""

    def __init__(self, build: dict):
        self.buffer = {s: int(build.get(f"{s}_TAGS", -1)) for s in _STREAMS}
        self.versions = {s: int(build.get(f"{s}_VERSIONS", 0)) for s in _STREAMS}
        self.epoch = 1
        self.task = -1  # the running task, for an error

    def on(self, stream: str) -> bool:
        return self.buffer[stream] >= 0

    def tag(self, stream: str, version: int) -> int:
        """Version `version` of `stream` in this step, as the kernel's unsigned tag held in an int32."""
        t = (self.epoch * self.versions[stream] + version) & 0xFFFFFFFF
        return t - (1 << 32) if t >= 1 << 31 else t

    def _words(self, mem, stream: str, start: int, n: int) -> torch.Tensor:
        return mem[self.buffer[stream]].view(-1, 2)[start:start + n]

    def store(self, mem, stream: str, start: int, values: torch.Tensor, version: int) -> None:
        """Store `values` (fp32) as the words of elements [start, start + len) of `stream` at `version`."""
        w = self._words(mem, stream, start, len(values))
        w[:, 0] = values.float().contiguous().view(torch.int32)
        w[:, 1] = self.tag(stream, version)

    def read(self, mem, stream: str, start: int, n: int, version: int) -> torch.Tensor:
        """The fp32 values of elements [start, start + n) of `stream` at `version`, from their words. Raises
        TaggedReadError where a word carries another tag."""
        w = self._words(mem, stream, start, n)
        want = self.tag(stream, version)
        if not bool((w[:, 1] == want).all()):  # where: only on the way to the error, off every task's path
            k = int((w[:, 1] != want).nonzero()[0])
            raise TaggedReadError(
                f"task {self.task} reads {_STREAMS[stream]}'s element {start + k} at version {version} (tag {want}), "
                f"but its word carries tag {int(w[k, 1])}: the CUDA VM would spin on it until its time-out",
                tasks=(self.task,) if self.task >= 0 else ())
        return w[:, 0].clone(memory_format=torch.contiguous_format).view(torch.float32)  # one copy, its own
