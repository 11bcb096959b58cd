"""The `device` argument: auto, cpu, cuda, or cuda:N for the current CUDA device. A string that only starts with
"cuda" (cudax, cuda:abc) was taken as cuda, and cuda:N of another device ran on the current one; both are now an
ArgumentError naming `device`."""

from __future__ import annotations

import pytest
import torch

from amk.harness import environment
from amk.harness.environment import Device, resolve_device
from amk.schedule.errors import ArgumentError


@pytest.mark.parametrize("bad", ["cudax", "cuda:abc", "cuda:", "CUDA:-1", "cuda:0x1"])
def test_a_malformed_cuda_string_names_device(bad):
    with pytest.raises(ArgumentError) as e:
        resolve_device(bad)
    assert e.value.argument == "device" and repr(bad) in str(e.value)


def test_cuda_n_must_be_the_current_device(monkeypatch):
    monkeypatch.setattr(environment, "cuda_usable", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda") is Device.CUDA and resolve_device("CUDA:0") is Device.CUDA
    with pytest.raises(ArgumentError, match="current CUDA device.*CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:1")


def test_cpu_and_auto_stand(monkeypatch):
    monkeypatch.setattr(environment, "cuda_usable", lambda: False)
    assert resolve_device("cpu") is Device.CPU and resolve_device("auto") is Device.CPU
    with pytest.raises(ArgumentError, match="not one of auto, cpu, cuda"):
        resolve_device("gpu")
