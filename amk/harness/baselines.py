"""GPU baselines that do not depend on the config, cached per (GPU, driver, torch, model, dtype, timing):
the streaming read bandwidth (the measured floor) and the peers' step latencies (the speed-ups).

Peers are slow to time (torch.compile takes minutes), so evaluate() only reads what is cached unless asked
to measure; `amk bench --peers` measures them once per machine and model."""

from __future__ import annotations

import logging

from amk.cache import Cache, baseline_key

from .environment import Device, environment

log = logging.getLogger("amk.harness")

BANDWIDTH_PARAMS = {"what": "read_bandwidth", "gib": 4.0, "repeats": 10}
PEERS = ("torch_static_cuda_graph", "transformers_eager", "torch_compile_cuda_graph")


def _key(model_fp: str, dtype: str, params: dict) -> str:
    env = environment(Device.CUDA)
    return baseline_key(str(env["gpu"]), str(env["driver"]), str(env["torch"]), model_fp, dtype, params)


def measured_bandwidth_gbs(cache: Cache) -> float | None:
    """Streaming read bandwidth of this GPU in GB/s (cached); None when it cannot be measured."""
    from amk.eval.roofline import measure_read_bandwidth

    key = _key("-", "-", BANDWIDTH_PARAMS)

    def create():
        return {"gbs": measure_read_bandwidth(BANDWIDTH_PARAMS["gib"], BANDWIDTH_PARAMS["repeats"])}

    try:
        return float(cache.get_or_create_json("baseline", key, create, validate=_positive("gbs"),
                                              label={"measurement": "read bandwidth", **BANDWIDTH_PARAMS})["gbs"])
    except Exception as e:  # the floor then falls back to the spec bandwidth, and the verdict says so
        log.warning("read bandwidth not measured: %s", e)
        return None


def peer_latencies(cache: Cache, model, max_seq: int, context: int, measure: bool,
                   which: tuple[str, ...] = PEERS[:2]) -> dict[str, float]:
    """peer name -> latency in us, from the cache; measured (and cached) first when `measure`."""
    from amk.eval import peers as P

    fns = {"torch_static_cuda_graph": lambda: P.time_static_graph(model, max_seq, context),
           "transformers_eager": lambda: P.time_eager(model, context),
           "torch_compile_cuda_graph": lambda: P.time_static_graph(model, max_seq, context, compiled=True)}
    dtype = str(model.dtype).removeprefix("torch.")
    out = {}
    for name in which:
        key = _key(model.fingerprint, dtype, {"peer": name, "max_seq": max_seq, "context": context})
        try:
            if measure:
                got = cache.get_or_create_json("baseline", key, lambda n=name: {"latency_us": fns[n]()["latency_us"]},
                                               validate=_positive("latency_us"),
                                               label={"model": model.name, "dtype": dtype, "peer": name,
                                                      "max_seq": max_seq, "context": context})
            else:
                got = cache.get_json("baseline", key, validate=_positive("latency_us"))
        except Exception as e:  # a peer that fails to run is left out, not guessed
            log.warning("peer %s not timed: %s", name, e)
            got = None
        if got:
            out[name] = float(got["latency_us"])
    return out


def _positive(field: str):
    def check(obj):
        v = obj[field]
        if not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{field}={v!r} is not a positive number")
    return check
