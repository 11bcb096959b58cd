"""The shared-memory budget of a block: what the kernel keeps for itself, what the weight rings take, and
what each kind of task stages (the validator, the tiler and the ABI header all read these figures)."""

from __future__ import annotations

from .graph import ModelDims

SMEM_BOOKKEEPING_BYTES = 2048  # bytes each block keeps for reductions, per-row accumulators of split rows
PAGE_ALIGN = 128  # bulk copies into shared memory stream at full rate only into 128-byte aligned pages
UNIT_VECS = 128  # 16-byte vectors a (row, chunk) unit of a page aims at (vm/pipeline.cuh's UNIT_VECS)
PRODUCER_THREADS = 32  # the weight producer warp, with pipeline pages
# The kernel's static shared memory comes out of the same per-block opt-in limit as smem_per_block. An upper
# bound of it: the instruction double buffer and reductions (896 bytes), the step's RoPE row (fp32 cos and sin a
# head dim), and per page two mbarriers. The loader checks the compiled figure.
STATIC_SMEM_BASE_BYTES = 1024
MAX_HEAD_DIM = 256  # the widest head the kernel takes (amk.models refuses a wider one)


def kernel_static_smem_bytes(build: dict, head_dim: int = MAX_HEAD_DIM) -> int:
    """Static shared memory of the kernel a program's build knobs compile for heads of `head_dim` (an upper
    bound; at the widest head_dim by default)."""
    return STATIC_SMEM_BASE_BYTES + 8 * head_dim + 16 * int(build.get("PAGES", 0)) + 16


def max_dynamic_smem(target_smem_max: int, build: dict | None = None, head_dim: int = MAX_HEAD_DIM) -> int:
    """The largest smem_per_block a target runs beside the kernel's static shared memory (see
    kernel_static_smem_bytes)."""
    return target_smem_max - kernel_static_smem_bytes(build or {}, head_dim)


def consumer_threads(threads_per_block: int, build: dict) -> int:
    """Threads that run tasks: all of the block, less the producer warp when the weight pipeline has pages."""
    return threads_per_block - (PRODUCER_THREADS if int(build.get("PAGES", 0)) > 0 else 0)


def ring_bytes(build: dict) -> int:
    """Bytes of the weight pipeline's pages (pipeline.pages x pipeline.page_kb)."""
    return int(build.get("PAGES", 0)) * int(build.get("PAGE_BYTES", 0))


def pages_in_flight(pipeline) -> int:
    """Copies the producer warp keeps in flight (the kernel's AMK_PAGES_INFLIGHT) under a PipelineConfig: its
    inflight_kb over the page size, at least one page and at most all of them (all of them for inflight_kb 0);
    0 without pages."""
    if pipeline.pages <= 0:
        return 0
    if pipeline.inflight_kb == 0:
        return pipeline.pages
    return max(1, min(pipeline.pages, pipeline.inflight_kb // pipeline.page_kb))


def work_smem_bytes(smem_per_block: int, ring: int) -> int:
    """Shared memory a task may use for staged inputs, accumulators and attention scores: all of it without
    pages, else what lies before them; the pages sit 128-byte aligned at the end (the kernel places them at
    this offset, from the generated header)."""
    if ring <= 0:
        return smem_per_block
    return (smem_per_block - ring) // PAGE_ALIGN * PAGE_ALIGN


def program_work_smem_bytes(smem_per_block: int, build: dict) -> int:
    """work_smem_bytes from a program's build knobs."""
    return work_smem_bytes(smem_per_block, ring_bytes(build))


def page_partials(klen: int, rows_computed: int, build: dict, nbytes: int) -> int:
    """4-byte words a matvec task keeps beside its staged input when its weights come through pages
    (vm/pipeline.cuh op_matvec_paged): one partial sum per (row, page of the row, chunk), padded to 16 bytes,
    and for 16-bit dtypes the input slice again in the weights' dtype; 0 without pages. The pages' tiling is the
    kernel's page_tiling."""
    page = int(build.get("PAGE_BYTES", 0))
    if int(build.get("PAGES", 0)) <= 0 or page <= 0:
        return 0
    elems, vec = page // nbytes, 16 // nbytes
    # rows wider than a page (16-bit: than half a page, two rows a tensor-core product) are cut into pieces that wide
    width = min(klen, elems // 2 if nbytes < 4 else elems)
    words = rows_computed * -(-klen // width) * max(1, width // vec // UNIT_VECS)
    return -(-words // 4) * 4 + (-(-klen * nbytes // 16) * 4 if nbytes < 4 else 0)


def group_tile(group: int) -> int:
    """q heads the block-wide attention passes take at a time (vm/attention.cuh GT): a KV group cut into the
    fewest tiles of at most 8 heads, as even as they go (20 heads: tiles of 7, 7 and 6)."""
    tiles = -(-group // 8)
    return -(-group // tiles)


def attention_chunk(work_bytes: int, dims: ModelDims) -> int:
    """Positions one attention task scores per round, holding every q head's scores in shared memory."""
    room = work_bytes - SMEM_BOOKKEEPING_BYTES - (2 * dims.group * dims.head_dim + 2 * dims.group) * 4
    return max(32, min(4096, room // (4 * dims.group)) // 32 * 32)


def attention_smem_bytes(chunk: int, dims, threads: int = 1024) -> int:
    """Shared memory of an attention task: q, (max, sum), the output, and one chunk of probabilities, an area
    the value reduction reuses for one partial output per warp and q head of a tile (group_tile)."""
    area = max(dims.group * chunk, threads // 32 * group_tile(dims.group) * dims.head_dim)
    return SMEM_BOOKKEEPING_BYTES + (2 * dims.group * dims.head_dim + 2 * dims.group + area) * 4


def attention_partial_smem_bytes(chunk: int, stage: int, dims, threads: int, cache_bytes: int) -> int:
    """Shared memory of an ATTN_PARTIAL task: q, (max, sum), the output, `chunk` positions of scores, the
    softmax-statistics scratch (2 floats per warp and q head), one head's values per warp (the warps sharing a
    q head merge through it), then `stage` K rows and V rows (16-byte aligned); the block-wide value reduction
    later reuses the area from the scores on for one partial output per warp and q head of a tile (group_tile).
    Layout: vm/attention_partitions.cuh op_attn_partial."""
    g, hd, warps = dims.group, dims.head_dim, threads // 32
    head = 2 * g * hd + 2 * g
    staged = -(-(head + g * chunk + 2 * warps * g + warps * hd) // 4) * 4 * 4 + 2 * stage * hd * cache_bytes
    return SMEM_BOOKKEEPING_BYTES + max(staged, (head + warps * group_tile(g) * hd) * 4)


def partial_positions(work_bytes: int, cap: int, dims, threads: int, cache_bytes: int) -> int:
    """Positions an ATTN_PARTIAL task holds in shared memory (scores, K and V rows): all `cap` of a partition
    when they fit, else as many as do; 0 when not even the fixed part fits. The bytes grow with the positions
    (attention_partial_smem_bytes), so the largest fit is found by bisection."""
    def fits(n: int) -> bool:
        return attention_partial_smem_bytes(n, n, dims, threads, cache_bytes) <= work_bytes

    if fits(cap):
        return cap
    lo, hi = 0, cap  # fits(lo) or lo == 0; not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def matvec_smem_bytes(width: int, rows_computed: int, partials: int = 0) -> int:
    """Shared memory of a matvec or epilogue task: the staged input (`width` floats, padded to 16 bytes), one
    accumulator per row (padded) and, with pages, `partials` partial sums (page_partials)."""
    return (-(-width // 4) * 4 + -(-rows_computed // 4) * 4 + partials) * 4 + SMEM_BOOKKEEPING_BYTES


def combine_heads(k0: int, klen: int, head_dim: int) -> int:
    """q heads an input slice [k0, k0 + klen) of the attention output covers."""
    return (k0 + klen - 1) // head_dim - k0 // head_dim + 1


def partial_bytes(build: dict, nbytes: int) -> int:
    """Bytes of one attention partition output element: the model's `nbytes` where attention.partials_dtype is
    'model' (the build's PARTIALS_MODEL_DTYPE), else 4 (fp32)."""
    return nbytes if int(build.get("PARTIALS_MODEL_DTYPE", 0)) else 4


def combine_per_copy(build: dict, nbytes: int) -> int:
    """Partition output elements one 16-byte copy of stage_combined holds: 4 fp32 or 8 bf16 or fp16 partials."""
    return 16 // partial_bytes(build, nbytes)


def combine_smem_bytes(klen: int, parts: int, stat_heads: int, threads: int, slots: int, per_copy: int = 4) -> int:
    """Shared memory of a matvec task that combines its input from `parts` attention partitions while staging
    it (vm/matvec.cuh stage_combined): the staged input (`klen` floats, padded to 16 bytes), the (max, sum) of
    each partition for `stat_heads` q heads (0 for a plain sum; padded), and `slots` 16-byte slots for each
    copying thread: a thread copies `per_copy` elements of a partition (16 bytes: 4 fp32 or 8 bf16 or fp16
    partials), so min(`threads`, klen / per_copy) of the consumer threads copy. The slots are free once the
    input is staged: the task's accumulators reuse them."""
    copiers = min(threads, -(-klen // per_copy))
    return (-(-klen // 4) * 4 + -(-2 * parts * stat_heads // 4) * 4 + 4 * slots * copiers) * 4 + SMEM_BOOKKEEPING_BYTES


def combine_slots(work_bytes: int, klen: int, parts: int, stat_heads: int, threads: int, per_copy: int = 4) -> int:
    """Partition slots a copying thread gets for combining a staged input in `work_bytes` of shared memory: all
    `parts` where they fit (one batch of copies); else as many as fit, rounded down to an even count (two
    batches of half of them in flight, one summed while the other lands) or 1; 0 when not even one fits.
    `per_copy`: as combine_smem_bytes."""
    room = work_bytes - combine_smem_bytes(klen, parts, stat_heads, threads, 0, per_copy)
    slots = max(0, min(parts, room // (16 * min(threads, -(-klen // per_copy)))))
    return slots - slots % 2 if 2 <= slots < parts else slots
