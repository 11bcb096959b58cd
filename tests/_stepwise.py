"""The megakernel step for step against the ReferenceVM on the same GPU, logits within a dtype's tolerance."""

from __future__ import annotations

import torch

from amk.eval.oracle import make_vm


def assert_steps_match(prog, model, dtype: str, steps: int) -> None:
    """Feed tokens 1..steps to both VMs of `prog` (positions 0..steps-1, each step's KV appended and read back by
    the next) and assert each step's logits agree: 1e-4 of the largest logit in fp32, 5e-2 in 16-bit dtypes."""
    gpu, ref = make_vm(prog, model, device="cuda", vm="cuda"), make_vm(prog, model, device="cuda")
    tol = 1e-4 if dtype == "fp32" else 5e-2
    for tok in range(1, steps + 1):
        a, _ = gpu.step(tok)
        b, _ = ref.step(tok)
        assert torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max()))), (tok, float((a - b).abs().max()))
