"""The physical floor of a decode step: the weight bytes a step reads (MegakernelProgram.step_weight_bytes), read
once, over read bandwidth."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Floor:
    """The floor of one step at the GPU's datasheet and measured read bandwidth (GB/s). `weight_bytes` is what a
    step reads (MegakernelProgram.step_weight_bytes), not what the program holds: the two differ by an untied
    embedding table less its one row."""

    weight_bytes: int
    spec_bandwidth_gbs: float
    measured_bandwidth_gbs: float | None

    @property
    def spec_us(self) -> float:
        return self.weight_bytes / (self.spec_bandwidth_gbs * 1e3) if self.spec_bandwidth_gbs else 0.0

    @property
    def measured_us(self) -> float | None:
        return self.weight_bytes / (self.measured_bandwidth_gbs * 1e3) if self.measured_bandwidth_gbs else None

    def percent_of(self, latency_us: float) -> dict:
        """Floor over latency, in percent (100 = at the floor)."""
        out = {"pct_of_spec_floor": 100.0 * self.spec_us / latency_us if self.spec_us else None}
        m = self.measured_us
        out["pct_of_measured_floor"] = 100.0 * m / latency_us if m else None
        return out

    def below_floor(self, latency_us: float, source: str = "measurement") -> str | None:
        """A reason to withhold a latency that beats physics, else None. `source` names where the latency came
        from ("measurement", "prediction") in the reason."""
        floor = self.measured_us or self.spec_us
        if floor and latency_us < floor:
            return (f"latency {latency_us:.1f} us is under the floor {floor:.1f} us ({self.weight_bytes} weight bytes at "
                    f"{self.measured_bandwidth_gbs or self.spec_bandwidth_gbs:.0f} GB/s): the {source} is wrong")
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "spec_floor_us": self.spec_us, "measured_floor_us": self.measured_us}


def measure_read_bandwidth(gib: float = 4.0, repeats: int = 10) -> float:
    """Streaming read bandwidth in GB/s: a sum over a buffer far larger than L2, timed with CUDA events."""
    import torch

    n = int(gib * (1 << 30)) // 4
    x = torch.ones(n, dtype=torch.float32, device="cuda")
    for _ in range(2):
        x.sum()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        x.sum()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    del x
    return n * 4 / (times[len(times) // 2] * 1e-3) / 1e9
