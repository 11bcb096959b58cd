"""amk.schedule: the IR an agent edits (ScheduleConfig), GPU targets, graph import, lowering and validation."""

from .config import ScheduleConfig, ScratchPolicy, SmAssignment, SyncGranularity, UnknownFieldError
from .errors import (
    AmkError,
    ArgumentError,
    ConfigError,
    ConfigProblem,
    DeadlockError,
    LoweringError,
    ProgramError,
    UnknownModelError,
    UnknownTargetError,
    UnsupportedModelError,
    VmError,
)
from .graph import Architecture, Graph, ModelDims, build_graph
from .lower import lower, lower_dims
from .opcodes import DType, Epilogue, Opcode
from .program import Buffer, BufferKind, Counter, MegakernelProgram, Region, Task, Wait
from .targets import TARGETS, GpuTarget, detect_target, get_target

__all__ = [
    "AmkError", "Architecture", "ArgumentError", "Buffer", "BufferKind", "ConfigError", "ConfigProblem", "Counter", "DType", "DeadlockError",
    "Epilogue", "GpuTarget", "Graph", "LoweringError", "MegakernelProgram", "ModelDims", "Opcode", "ProgramError",
    "Region", "ScheduleConfig", "ScratchPolicy", "SmAssignment", "SyncGranularity", "TARGETS", "Task",
    "UnknownFieldError", "UnknownModelError", "UnknownTargetError", "UnsupportedModelError", "VmError", "Wait", "build_graph",
    "detect_target", "get_target", "lower", "lower_dims",
]
