"""The shared-memory budget of a block: what the kernel keeps for itself, what the weight rings take, and
what each kind of task stages (the validator, the tiler and the ABI header all read these figures)."""

from __future__ import annotations

from .graph import ModelDims

SMEM_BOOKKEEPING_BYTES = 2048  # bytes each block keeps for reductions, per-row accumulators of split rows
RING_SLOT_BYTES = 16384  # one bulk copy target of the weight ring; a whole row of K=8192 in bf16
RING_ALIGN = 128  # bulk copies into shared memory stream at full rate only into 128-byte aligned slots
# The kernel's static shared memory comes out of the same per-block opt-in limit as smem_per_block. An upper
# bound of it: the instruction double buffer and reductions (896 bytes) and one mbarrier per weight-ring slot.
# The loader checks the compiled figure.
STATIC_SMEM_BASE_BYTES = 1024


def kernel_static_smem_bytes(build: dict) -> int:
    """Static shared memory of the kernel a program's build knobs compile (an upper bound)."""
    return STATIC_SMEM_BASE_BYTES + 8 * (int(build.get("WEIGHT_RING_KB", 0)) * 1024 // RING_SLOT_BYTES)


def max_dynamic_smem(target_smem_max: int, build: dict | None = None) -> int:
    """The largest smem_per_block a target runs beside the kernel's static shared memory."""
    return target_smem_max - kernel_static_smem_bytes(build or {})


def async_ring_bytes(steps: int, rows_in_flight: int, loads_in_flight: int, threads: int) -> int:
    """The per-thread cp.async ring of build.async_steps: each step is rows x loads 16-byte vectors a thread."""
    return steps * rows_in_flight * loads_in_flight * 16 * threads


def work_smem_bytes(smem_per_block: int, ring_kb: int, async_bytes: int = 0) -> int:
    """Shared memory a task may use for staged inputs, accumulators and attention scores: all of it without a
    weight ring or cp.async ring, else what lies before them; they sit 128-byte aligned at the end (the
    kernel places them at this offset, from the generated header)."""
    if ring_kb <= 0 and async_bytes <= 0:
        return smem_per_block
    return (smem_per_block - ring_kb * 1024 - async_bytes) // RING_ALIGN * RING_ALIGN


def program_work_smem_bytes(smem_per_block: int, threads: int, build: dict) -> int:
    """work_smem_bytes from a program's build knobs."""
    steps = int(build.get("ASYNC_STEPS", 0))
    asy = async_ring_bytes(steps, int(build.get("ROWS_IN_FLIGHT", 1)), int(build.get("LOADS_IN_FLIGHT", 1)), threads)
    return work_smem_bytes(smem_per_block, int(build.get("WEIGHT_RING_KB", 0)), asy)


def attention_chunk(work_bytes: int, dims: ModelDims) -> int:
    """Positions one attention task scores per round, holding every q head's scores in shared memory."""
    room = work_bytes - SMEM_BOOKKEEPING_BYTES - (2 * dims.group * dims.head_dim + 2 * dims.group) * 4
    return max(32, min(4096, room // (4 * dims.group)) // 32 * 32)


def attention_smem_bytes(chunk: int, dims, threads: int = 1024) -> int:
    """Shared memory of an attention task: q, (max, sum), the output, and one chunk of probabilities, an area
    the value reduction reuses for one partial output per warp."""
    area = max(dims.group * chunk, threads // 32 * dims.group * dims.head_dim)
    return SMEM_BOOKKEEPING_BYTES + (2 * dims.group * dims.head_dim + 2 * dims.group + area) * 4


def attention_partial_smem_bytes(chunk: int, stage: int, dims, threads: int, cache_bytes: int) -> int:
    """Shared memory of an ATTN_PARTIAL task: q, (max, sum), the output, `chunk` positions of scores, the
    softmax-statistics scratch (2 floats per warp and q head), then `stage` K rows and V rows (16-byte aligned);
    the value reduction later reuses the area from the scores on for one partial output per warp."""
    g, hd, warps = dims.group, dims.head_dim, threads // 32
    head = 2 * g * hd + 2 * g
    staged = -(-(head + g * chunk + 2 * warps * g) // 4) * 4 * 4 + 2 * stage * hd * cache_bytes
    return SMEM_BOOKKEEPING_BYTES + max(staged, (head + warps * g * hd) * 4)


def partial_positions(work_bytes: int, cap: int, dims, threads: int, cache_bytes: int) -> int:
    """Positions an ATTN_PARTIAL task holds in shared memory (scores, K and V rows): all `cap` of a partition
    when they fit, else as many as do; 0 when not even the fixed part fits."""
    fixed = attention_partial_smem_bytes(0, 0, dims, threads, cache_bytes)
    per = dims.group * 4 + 2 * dims.head_dim * cache_bytes
    n = min(cap, max(0, (work_bytes - fixed - 16) // per))
    while n > 0 and attention_partial_smem_bytes(n, n, dims, threads, cache_bytes) > work_bytes:
        n -= 1
    return n


def matvec_smem_bytes(klen: int, rows_computed: int) -> int:
    """Shared memory of a matvec or epilogue task: the staged input slice and one accumulator per row."""
    return (klen + rows_computed) * 4 + SMEM_BOOKKEEPING_BYTES
