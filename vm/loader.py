"""MegakernelVM: build the persistent kernel with NVRTC (through CuPy) and run programs on torch tensors."""

from __future__ import annotations

import hashlib
import logging
import time
from importlib import resources

import torch

from amk.schedule.errors import EnvironmentProblem, ProgramError, UnsupportedModelError, VmError, context_full
from amk.schedule.program import BufferKind, MegakernelProgram

from .abi import Ctrl, VmErrorCode, generate_header

_log = logging.getLogger("amk.vm")
KERNEL_NAME = "amk_megakernel"
DEFAULT_TIMEOUT_S = 1.0
# MegakernelVM.trace's int64 words a task (the tracing build): start, dependencies met and done (globaltimer ns),
# the block (low 32 bits) and the SM that ran it (%smid, high 32 bits), the cycles thread 0 spent in the task's
# four phases (vm/base.cuh PHASE), and clock64 at start and done, so that the phase cycles convert to time at
# the clock the SM ran at (vm/base.cuh AMK_TRACE_WORDS, a test ties them)
TRACE_WORDS = 10
_MODULES: dict[str, object] = {}  # in-process: key -> cupy RawModule
DEFAULT_CACHE = object()  # MegakernelVM(cache=...): the process-wide amk.cache; None builds without a file cache


KERNEL_PARTS = ("base.cuh", "epilogue.cuh", "matvec.cuh", "attention.cuh", "attention_partitions.cuh",
                "pipeline.cuh", "megakernel.cu")


def kernel_source() -> str:
    """The kernel as one translation unit: its parts in dependency order (the ABI header goes first)."""
    root = resources.files("amk.vm")
    return "\n".join(f"// ---- {name}\n" + root.joinpath(name).read_text() for name in KERNEL_PARTS)


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise EnvironmentProblem("the CUDA VM needs cupy (pip install 'amk[cuda]')") from e
    return cupy


def cuda_include_dir() -> str:
    """A folder holding cuda_fp16.h / cuda_bf16.h for NVRTC: CUDA_PATH/CUDA_HOME, /usr/local/cuda*, or the
    headers of the pip CUDA runtime package."""
    import glob
    import os

    cands = [os.path.join(os.environ[v], "include") for v in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(v)]
    cands += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    try:
        import nvidia

        for root in nvidia.__path__:
            cands += sorted(glob.glob(os.path.join(root, "*", "include")))
    except ImportError:
        pass
    for d in cands:
        if os.path.exists(os.path.join(d, "cuda_fp16.h")):
            return d
    raise EnvironmentProblem("no CUDA headers (cuda_fp16.h) found for NVRTC; set CUDA_PATH")


def compile_options(arch: str) -> tuple[str, ...]:
    return ("-std=c++17", f"-arch={arch}", f"-I{cuda_include_dir()}")


def nvrtc_version() -> str:
    return ".".join(map(str, _cupy().cuda.nvrtc.getVersion()))


def compile_cubin(code: str, arch: str) -> bytes:
    """NVRTC straight to a cubin for `arch` (no device query, so it also runs on a machine without a GPU)."""
    from cupy.cuda import compiler

    prog = compiler._NVRTCProgram(code, "amk_megakernel.cu", method="cubin")
    try:
        cubin, _ = prog.compile(compile_options(arch), None)
    except Exception as e:  # the compiler log names the line
        raise VmError(f"NVRTC failed to build the megakernel for {arch}: {e}") from e
    return bytes(cubin)


def _header_and_key(program: MegakernelProgram, arch: str, trace: bool) -> tuple[str, str, str, str]:
    header = generate_header(program) + ("#define AMK_TRACE 1\n" if trace else "")
    source = kernel_source()
    nvrtc = nvrtc_version()
    key = hashlib.sha256("\0".join([source, header, repr(compile_options(arch)), arch, nvrtc, KERNEL_NAME])
                         .encode()).hexdigest()
    return header, source, nvrtc, key


def precompile(program: MegakernelProgram, arch: str, cache) -> str:
    """Build this program's kernel into the file cache without loading it (no GPU needed: NVRTC only), so
    that a MegakernelVM made later, in any process, loads it from there. Returns "file" when it was already
    cached, else "compiled". What the search's builder processes run for the next candidates."""
    from amk.cache import kernel_key

    check_kernel_shape(program)
    header, source, nvrtc, _ = _header_and_key(program, arch, False)
    ckey = kernel_key(source, header, dict(program.build), arch, nvrtc, KERNEL_NAME, " ".join(compile_options(arch)))
    if cache.get("kernel", ckey) is not None:
        return "file"
    cache.put("kernel", ckey, compile_cubin(header + "\n" + source, arch))
    return "compiled"


def check_head_row(head_dim: int, nbytes: int) -> None:
    """UnsupportedModelError, naming head_dim and the dtype, for a model the kernel cannot be built for: a K row
    of more than 32 16-byte vectors, since the attention's scores give each vector of a row a lane of one warp
    (vm/attention.cuh, HD_SV). `nbytes`: bytes of one weight. head_dim 256 builds in bf16 and fp16; in fp32
    head_dim is at most 128. The ReferenceVM runs any."""
    vecs = head_dim * nbytes // 16
    if vecs > 32:
        name = "fp32" if nbytes == 4 else "a 16-bit dtype"
        raise UnsupportedModelError(f"head_dim={head_dim} in {name}",
                                    f"the CUDA kernel takes a K row of at most 32 16-byte vectors, this one has "
                                    f"{vecs}: head_dim at most {32 * 16 // nbytes} in {name}; use bf16 or fp16")


def check_kernel_shape(program: MegakernelProgram) -> None:
    """check_head_row for a program."""
    check_head_row(program.constants.head_dim, program.constants.dtype.nbytes)


def build_module(program: MegakernelProgram, arch: str, cache=None, trace: bool = False):
    """The kernel for this program's header and knobs: from the in-process table, the file cache, or NVRTC.
    Returns (cupy Module, key, origin). `trace` builds the variant that timestamps every task. Raises
    UnsupportedModelError for a shape the kernel does not take (check_kernel_shape)."""
    check_kernel_shape(program)
    cupy = _cupy()
    header, source, nvrtc, key = _header_and_key(program, arch, trace)
    if key in _MODULES:
        return _MODULES[key], key, "memory"
    cubin, origin = None, "compiled"
    if cache is not None:
        from amk.cache import kernel_key

        ckey = kernel_key(source, header, dict(program.build), arch, nvrtc, KERNEL_NAME,
                          " ".join(compile_options(arch)))
        cubin = cache.get("kernel", ckey)
        origin = "file" if cubin is not None else origin
    if cubin is None:
        cubin = compile_cubin(header + "\n" + source, arch)
        if cache is not None:
            try:
                cache.put("kernel", ckey, cubin)
            except OSError as e:  # an unwritable cache costs the next process a compile, nothing more
                _log.warning("kernel not written to the cache (%s): %s", cache.root, e)
    module = cupy.cuda.function.Module()
    module.load(cubin)
    _MODULES[key] = module
    return module, key, origin


class MegakernelVM:
    """Runs a program as one persistent kernel per decode step, on torch's current stream."""

    def __init__(self, program: MegakernelProgram, weights: dict[int, torch.Tensor], device: str | int = "cuda",
                 timeout_s: float = DEFAULT_TIMEOUT_S, cache=DEFAULT_CACHE, trace: bool = False):
        if not torch.cuda.is_available():
            raise EnvironmentProblem("the CUDA VM needs a CUDA device; none is visible")
        self.program = program
        self.c = program.constants
        self.device = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        props = torch.cuda.get_device_properties(self.device)
        if program.num_sms > props.multi_processor_count:
            raise ProgramError(f"program has {program.num_sms} SM queues, the device has {props.multi_processor_count} "
                               "SMs: a persistent kernel needs every block resident", ())
        self.arch = f"sm_{props.major}{props.minor}"
        if cache is DEFAULT_CACHE:  # a new process loads an already-built variant from the file cache
            from amk.cache import default_cache

            cache = default_cache()
        t0 = time.perf_counter()
        self.module, self.kernel_key, self.build_origin = build_module(program, self.arch, cache, trace)
        self.kernel = self.module.get_function(KERNEL_NAME)
        self.build_seconds = time.perf_counter() - t0
        drv = _cupy().cuda.driver
        static = drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, self.kernel.ptr)
        optin = int(props.shared_memory_per_block_optin)
        if static + program.smem_per_block > optin:
            raise ProgramError(f"smem_per_block={program.smem_per_block} plus the kernel's {static} bytes of static "
                               f"shared memory exceeds the device's {optin} bytes a block: lower smem_per_block", ())
        drv.funcSetAttribute(self.kernel.ptr, drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, program.smem_per_block)
        self.registers = drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_NUM_REGS, self.kernel.ptr)
        # local memory per thread (spills, run-time indexed arrays): the weight stream evicts it from L1
        self.local_bytes = drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, self.kernel.ptr)
        resident = drv.occupancyMaxActiveBlocksPerMultiprocessor(self.kernel.ptr, program.threads_per_block,
                                                                 program.smem_per_block)
        if resident < 1:
            raise ProgramError(f"a block of {program.threads_per_block} threads with {program.smem_per_block} bytes of "
                               f"shared memory ({self.registers} registers a thread) cannot be resident on an SM")
        self.timeout_ns = int(timeout_s * 1e9)
        table, starts, producers = program.pack()
        dev = self.device
        self.instrs = torch.from_numpy(table).to(dev)
        self.qstarts = torch.from_numpy(starts).to(dev)
        self.producers = torch.from_numpy(producers).to(dev)
        self.counters = torch.zeros(max(1, len(program.counters)), dtype=torch.int32, device=dev)
        self.control = torch.zeros(Ctrl.SIZE, dtype=torch.int32, device=dev)
        self.tensors: dict[int, torch.Tensor] = {}
        for b in program.buffers:
            if b.kind == BufferKind.WEIGHT:
                self.tensors[b.id] = weights[b.id].to(dev).contiguous()
            elif not (b.kind == BufferKind.SCRATCH and b.arena >= 0):
                self.tensors[b.id] = torch.zeros(b.numel, dtype=b.dtype.torch, device=dev)
        ptrs = []
        for b in program.buffers:
            if b.id in self.tensors:
                ptrs.append(self.tensors[b.id].data_ptr())
            else:
                ptrs.append(self.tensors[b.arena].data_ptr() + 4 * b.arena_off)
        self.ptrs = torch.tensor(ptrs, dtype=torch.int64, device=dev)
        self.trace = torch.zeros((len(program.tasks), TRACE_WORDS), dtype=torch.int64, device=dev) if trace else None
        self.cols = torch.tensor([b.cols for b in program.buffers], dtype=torch.int32, device=dev)
        self._kv = [b.id for b in program.buffers if b.kind == BufferKind.KV]
        # the tagged streams' words (x's, the hidden row's), where the build tags them
        self._tag_words = [b for b in (int(program.build.get(k, -1)) for k in ("X_TAGS", "H_TAGS")) if b >= 0]
        self.steps_launched = 0
        self._advance = None
        self._params = self._kernel_params()
        self.reset()

    # ---- state ---------------------------------------------------------------------------------
    def _reset_sync(self) -> None:
        self.counters.zero_()
        self.control.zero_()
        self.control[Ctrl.EPOCH] = 1
        for b in self._tag_words:  # their tags count epochs: a word of an earlier run must not carry one of the next
            self.tensors[b].zero_()
        self.steps_launched = 0
        self._advance = False

    def reset(self) -> None:
        self._reset_sync()
        for bid in self._kv:
            self.tensors[bid].fill_(float("nan"))
        self.set_position(0)

    def set_position(self, pos: int) -> None:
        if not 0 <= pos < self.c.max_seq:
            raise ValueError(f"position {pos} outside the program's context of {self.c.max_seq}")
        self.tensors[self.c.pos].fill_(pos)
        self._pos = pos

    @property
    def position(self) -> int:
        """The position the next step decodes at (the host's count: launches advance it without a sync); equal
        to max_seq once the last slot has been decoded."""
        return self._pos

    def load_kv_prefix(self, k: torch.Tensor, v: torch.Tensor) -> None:
        c = self.c
        P = k.shape[2]
        for bid, src in zip(self._kv, (k, v)):
            cache = self.tensors[bid].view(c.n_layers, c.n_kv_heads, c.max_seq, c.head_dim)
            cache[:, :, :P] = src.to(device=self.device, dtype=cache.dtype)
        self.set_position(P)

    def set_token(self, token: int) -> None:
        self.tensors[self.c.token].fill_(int(token))

    @property
    def logits(self) -> torch.Tensor:
        return self.tensors[self.c.logits]

    @property
    def token(self) -> torch.Tensor:
        return self.tensors[self.c.token]

    # ---- running -------------------------------------------------------------------------------
    def _kernel_params(self):
        """ctypes argument block for cuLaunchKernel, built once: the buffers never move."""
        import ctypes

        vals = [ctypes.c_uint64(t.data_ptr()) for t in (self.instrs, self.qstarts, self.ptrs, self.cols, self.counters,
                                                        self.producers, self.control)]
        vals.append(ctypes.c_int64(self.timeout_ns))
        vals.append(ctypes.c_uint64(self.trace.data_ptr() if self.trace is not None else 0))
        ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
        return vals, ptrs

    def set_advance(self, advance: bool) -> None:
        if advance != self._advance:
            self.control[Ctrl.ADVANCE] = 1 if advance else 0
            self._advance = advance

    def launch(self, advance: bool = True) -> None:
        """Enqueue one decode step on torch's current stream: no host synchronisation. The step reads the
        token buffer (the previous step's argmax) and, with `advance`, moves the position on the device."""
        import ctypes

        if self._pos >= self.c.max_seq:
            raise context_full(self._pos, self.c.max_seq)
        self.set_advance(advance)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        _cupy().cuda.driver.launchKernel(
            self.kernel.ptr, self.program.num_sms, 1, 1, self.program.threads_per_block, 1, 1,
            self.program.smem_per_block, stream, ctypes.addressof(self._params[1]), 0)
        self.steps_launched += 1
        if advance:
            self._pos += 1

    def check(self) -> None:
        """Synchronise and raise VmError on a device-side error or on a task count that is not exactly the
        program's task count per launched step (proof that every task ran on the GPU)."""
        torch.cuda.current_stream(self.device).synchronize()
        ctrl = self.control.cpu().tolist()
        if ctrl[Ctrl.ERR]:
            code = VmErrorCode(ctrl[Ctrl.ERR]) if ctrl[Ctrl.ERR] in VmErrorCode._value2member_map_ else ctrl[Ctrl.ERR]
            task = ctrl[Ctrl.ERR_TASK]
            kind = self.program.tasks[task].kind if 0 <= task < len(self.program.tasks) else "?"
            detail = ctrl[Ctrl.ERR_DETAIL]
            waited = {-1: "a weight page", -2: "the residual stream's tagged values",
                      -3: "the MLP hidden row's tagged values"}.get(detail, f"counter {detail}")
            what = {VmErrorCode.TIMEOUT: f"timed out waiting on {waited}",
                    VmErrorCode.BAD_OPCODE: f"bad opcode {detail}",
                    VmErrorCode.BAD_TOKEN: f"token {detail} outside the vocabulary",
                    VmErrorCode.BAD_POSITION: f"position {detail} outside the KV cache's {self.c.max_seq} slots "
                                              "(no task ran)"}.get(code, f"error {code}")
            self._reset_sync()
            raise VmError(f"megakernel failed: task {task} ({kind}) {what}", task=task, code=int(ctrl[Ctrl.ERR]))
        expected = len(self.program.tasks) * self.steps_launched
        if ctrl[Ctrl.TASKS] != expected:
            got = ctrl[Ctrl.TASKS]
            self._reset_sync()
            raise VmError(f"megakernel ran {got} tasks over {self.steps_launched} steps, expected {expected}")

    def step(self, token: int) -> tuple[torch.Tensor, int]:
        """Checked step (the verify path): decode `token` at the current position, return (fp32 CPU logits,
        greedy next token) and advance the position."""
        self.set_token(token)
        self.launch(advance=True)
        self.check()
        return self.logits.float().cpu().clone(), int(self.token.item())
