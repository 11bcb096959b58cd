"""GPU targets as data, and detection of the live device."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ArgumentError, EnvironmentProblem, UnknownTargetError


@dataclass(frozen=True)
class GpuTarget:
    name: str
    sm_count: int
    spec_bandwidth_gbs: float  # vendor datasheet DRAM bandwidth
    smem_per_block_max: int  # opt-in dynamic shared memory per block, bytes
    l2_bytes: int
    arch: str  # nvrtc arch, e.g. sm_90
    max_threads_per_block: int = 1024
    # device memory in bytes: a registered target's the total nvidia-smi reports, a detected one's the total the
    # CUDA driver gives (totalGlobalMem, about 0.5 GiB less on an H100); None: unknown, not checked
    memory_bytes: int | None = None

    @property
    def lacks_bulk_copies(self) -> bool:
        """A real GPU older than sm_90: no cp.async.bulk or mbarrier transaction counts, so no pipeline pages
        (cpu-sim, arch "none", runs them on the ReferenceVM)."""
        return self.arch != "none" and int(self.arch.split("_")[1]) < 90

    def to_dict(self) -> dict:
        return asdict(self)


_MB = 1024 * 1024
TARGETS: dict[str, GpuTarget] = {
    t.name: t
    for t in [
        GpuTarget("h100-sxm", 132, 3350.0, 227 * 1024, 50 * _MB, "sm_90", memory_bytes=81559 * _MB),
        GpuTarget("h100-pcie", 114, 2000.0, 227 * 1024, 50 * _MB, "sm_90", memory_bytes=81559 * _MB),
        GpuTarget("h200", 132, 4800.0, 227 * 1024, 60 * _MB, "sm_90", memory_bytes=143771 * _MB),
        GpuTarget("a100-80gb", 108, 2039.0, 163 * 1024, 40 * _MB, "sm_80", memory_bytes=81920 * _MB),
        GpuTarget("l4", 58, 300.0, 99 * 1024, 48 * _MB, "sm_89", memory_bytes=23034 * _MB),
        GpuTarget("rtx4090", 128, 1008.0, 99 * 1024, 72 * _MB, "sm_89", memory_bytes=24564 * _MB),
        GpuTarget("rtx5090", 170, 1792.0, 99 * 1024, 96 * _MB, "sm_120", memory_bytes=32607 * _MB),
        GpuTarget("b200", 148, 8000.0, 227 * 1024, 126 * _MB, "sm_100", memory_bytes=183359 * _MB),
        # A CPU stand-in: the toy loop on a machine with no GPU lowers for a small SM count. Its block runs the
        # default 96 KiB beside the kernel's static shared memory.
        GpuTarget("cpu-sim", 8, 50.0, 100 * 1024, 8 * _MB, "none"),
    ]
}


def get_target(name: str | GpuTarget, argument: str = "target") -> GpuTarget:
    """The GpuTarget of a registered name (any case; "auto": the live GPU's), or `name` itself when it is one.
    UnknownTargetError for a name not registered; ArgumentError naming `argument` for something that is neither a
    name nor a GpuTarget (a number, a list), which no spelling fix would turn into one."""
    if isinstance(name, GpuTarget):
        return name
    if not isinstance(name, str):
        text = repr(name)
        raise ArgumentError(argument, f"expected a GPU target name ({', '.join(sorted(TARGETS))}) or a GpuTarget, "
                                      f"got {type(name).__name__} {text if len(text) <= 60 else text[:57] + '...'}")
    key = str(name).lower()
    if key == "auto":
        return detect_target()
    if key not in TARGETS:
        raise UnknownTargetError(str(name), sorted(TARGETS))
    return TARGETS[key]


_NAME_HINTS = [("h200", "h200"), ("h100 pcie", "h100-pcie"), ("h100", "h100-sxm"), ("a100", "a100-80gb"),
               ("l4", "l4"), ("4090", "rtx4090"), ("5090", "rtx5090"), ("b200", "b200")]


def detect_target(device_index: int | None = None) -> GpuTarget:
    """The live CUDA device as a GpuTarget: a known record when the name matches, with the SM count,
    shared memory and L2 read off the device. `device_index`: None (the current device) or a device's index.
    Raises ArgumentError naming device_index for anything else, EnvironmentProblem with no CUDA device."""
    if device_index is not None and (isinstance(device_index, bool) or not isinstance(device_index, int)
                                     or device_index < 0):
        raise ArgumentError("device_index", f"expected None or a CUDA device's index (0, 1, ...), got "
                                            f"{device_index!r:.60}")
    import torch

    if not torch.cuda.is_available():
        raise EnvironmentProblem("no CUDA device: cannot detect a GPU target (pass --gpu NAME)")
    if device_index is not None and device_index >= torch.cuda.device_count():
        raise ArgumentError("device_index", f"{device_index}: this machine has {torch.cuda.device_count()} CUDA "
                                            "device(s)")
    idx = torch.cuda.current_device() if device_index is None else device_index
    props = torch.cuda.get_device_properties(idx)
    lname = props.name.lower()
    base = next((TARGETS[t] for hint, t in _NAME_HINTS if hint in lname), None)
    smem = int(getattr(props, "shared_memory_per_block_optin", 0) or (base.smem_per_block_max if base else 48 * 1024))
    l2 = int(getattr(props, "L2_cache_size", 0) or (base.l2_bytes if base else 0))
    return GpuTarget(
        name=base.name if base else lname.replace(" ", "-"),
        sm_count=int(props.multi_processor_count),
        spec_bandwidth_gbs=base.spec_bandwidth_gbs if base else 0.0,
        smem_per_block_max=smem,
        l2_bytes=l2,
        arch=f"sm_{props.major}{props.minor}",
        memory_bytes=int(props.total_memory),
    )
