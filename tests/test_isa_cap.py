"""An ISA cap (ONEDNN_MAX_CPU_ISA with OV_CPU_MAX_ISA) makes this processor run as an older one: the
flags that choose numerics drop what the cap forbids, and OpenVINO's kernels follow it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.machine import machine_label
from engines.core import hardware, numerics

ROOT = Path(__file__).resolve().parent.parent
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_an_avx2_cap_drops_avx512_amx_and_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware.Path, "read_text", lambda self: "flags\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile avx_vnni\n")
    assert hardware.cpu_has_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert hardware.isa_cap() == "AVX2"
    assert hardware.cpu_flags() == {"fpu", "sse2", "avx2", "fma"}
    assert not hardware.cpu_has_bf16()
    assert numerics.openvino_precision("auto") == "f32" and numerics.openvino_float_hint("int8") == "f32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert hardware.cpu_has_bf16() and "amx_bf16" not in hardware.cpu_flags()


def test_an_unknown_cap_is_no_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert hardware.isa_cap() is None


def test_the_machine_label_names_the_cap() -> None:
    facts = {"cpu_model": "Intel(R) Xeon(R) Processor", "usable_cpus": 2}
    assert machine_label({**facts, "isa_cap": "AVX2"}) == "intel-xeon-2c-avx2-cap"
    assert machine_label({**facts, "isa_cap": None}) == "intel-xeon-2c"


PROBE = """
import json, sys
from pathlib import Path
from benchmarks.openvino_profile import profile
result = profile(Path(sys.argv[1]), "unet", "bf16", 256, 256, static=False, repeats=1)
print(json.dumps(sorted({row["kernel"] for row in result["kernels"]})))
"""


@pytest.mark.skipif(not (hardware.cpu_flags() & {"avx512f", "amx_bf16"}), reason="this processor has nothing past AVX2 to cap")
def test_openvino_kernels_follow_the_cap(openvino_engines: Path) -> None:
    pytest.importorskip("openvino")
    result = subprocess.run([sys.executable, "-c", PROBE, str(openvino_engines)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, **AVX2})
    assert result.returncode == 0, result.stderr
    kernels = json.loads(result.stdout.splitlines()[-1])
    assert kernels and not [k for k in kernels if "avx512" in k or "amx" in k], kernels
    assert any("avx2" in k for k in kernels), kernels
