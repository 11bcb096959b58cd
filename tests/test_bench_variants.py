"""bench/variants.py: variant specs, and the define prefix reaching the kernel source and its build key."""

import importlib.util
import sys
from pathlib import Path

import pytest

import amk
from amk.schedule import get_target
from amk.vm import loader

_SPEC = importlib.util.spec_from_file_location("bench_variants", Path(__file__).parents[1] / "bench" / "variants.py")
variants = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = variants  # its dataclass looks its module up
_SPEC.loader.exec_module(variants)


def test_a_variant_is_a_name_and_its_defines_in_order():
    assert variants.parse_variant("base=") == variants.Variant("base", ())
    v = variants.parse_variant("both=AMK_A=1,AMK_B=0x10")
    assert v.defines == (("AMK_A", "1"), ("AMK_B", "0x10"))
    assert v.prefix == "#define AMK_A 1\n#define AMK_B 0x10\n"


@pytest.mark.parametrize("text, part", [("base", "expected NAME="), ("1x=A=1", "expected NAME="),
                                        ("v=A", "'A' is not DEFINE=VALUE"), ("v=A=1,=2", "'=2' is not"),
                                        ("v=A=", "'A=' is not"), ("v=A=1\n#include <x>", "a number or a name"),
                                        ("v=A=1\\,B=2", "a number or a name"), ("v=A=/*", "a number or a name"),
                                        ("v=A=1,,B=2", "'' is not"),
                                        ("v=A=1,A=2", "A is defined twice")])
def test_a_malformed_variant_names_its_bad_part(text, part):
    with pytest.raises(ValueError, match=part):
        variants.parse_variant(text)


def test_the_prefix_leads_the_kernel_source_and_changes_the_build_key_only_while_open(monkeypatch):
    monkeypatch.setattr(loader, "nvrtc_version", lambda: "13.0")  # no cupy on a CPU machine
    prog = amk.lower(amk.load_model("toy", dtype="fp32", weights=False), get_target("h200"), None, max_seq=64)
    plain = loader.kernel_source()
    key = loader._header_and_key(prog, "sm_90", False)[3]
    with variants.kernel_defines("#define AMK_X 1\n"):
        assert loader.kernel_source() == "#define AMK_X 1\n" + plain
        assert loader._header_and_key(prog, "sm_90", False)[3] != key
    assert loader.kernel_source() == plain and loader._header_and_key(prog, "sm_90", False)[3] == key


def test_a_bound_must_name_a_variant(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["variants.py", "--variant", "base=", "--variant", "free=AMK_BOUND_NO_WAIT=1",
                                      "--bound", "fre"])
    with pytest.raises(SystemExit) as e:
        variants.main()
    assert e.value.code == 2
    assert "--bound: 'fre' names no --variant" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["variants.py", "--variant", "base=", "--variant", "free=AMK_BOUND_NO_WAIT=1",
                                      "--bound", "base"])
    with pytest.raises(SystemExit):
        variants.main()
    assert "--bound: 'base' is the first --variant, the one the others are compared with" in capsys.readouterr().err


def test_the_bound_defines_build_with_nothing_on_the_stack():
    # what a --bound variant's kernel adds (the token folded into the vocabulary) and the free-synchronisation
    # bound, under the GPU image's NVRTC
    import platform

    if not (sys.platform == "linux" and platform.machine() == "x86_64"):
        pytest.skip("the NVRTC wheels of the dev extras are for Linux x86_64")
    from amk.vm import nvrtc
    from amk.vm.abi import generate_header

    prog = amk.lower(amk.load_model("toy", dtype="bf16", weights=False), get_target("h200"), None, max_seq=64)
    prefix = "#define AMK_BOUND_ANY_TOKEN 1\n#define AMK_BOUND_NO_WAIT 1\n"
    res = nvrtc.kernel_resources(generate_header(prog) + "\n" + prefix + loader.kernel_source(), "sm_90")
    assert res.stack_bytes == 0 and res.registers > 0
