"""API drift, caught on the CPU: our TensorRT code may touch only names TensorRT 11 has.

TensorRT cannot be installed on the development machines, so nothing here imports it: the test
reads our source and checks every `trt.X.Y`, every method called on a TensorRT object (by the
variable names in tests/tensorrt_api.py) and every string handed to getattr against the TensorRT 11
API as NVIDIA publishes it (tests/tensorrt_api.py says where each name was checked).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import fake_tensorrt
from tests.helpers import REPO
from tests.tensorrt_api import CLASSES, MODULE, REMOVED, VARIABLES

TENSORRT_CODE = (REPO / "engines/backends/tensorrt_engine.py", REPO / "engines/build/tensorrt_plans.py")


def _base_name(node: ast.expr) -> str | None:
    """`builder` for `builder.x`, `context` for `self.context.x`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def tensorrt_uses(source: str) -> list[str]:
    """Every TensorRT name the source touches that TensorRT 11 does not have, as 'line: what'."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
            if node.attr in REMOVED:
                problems.append(f"{node.lineno}: .{node.attr} was removed from TensorRT")
            if isinstance(node.value, ast.Name) and node.value.id == "trt" and node.attr not in MODULE:
                problems.append(f"{node.lineno}: trt.{node.attr} is not in TensorRT 11")
            if (
                isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "trt"
                and node.attr not in MODULE.get(node.value.attr, frozenset())
            ):
                problems.append(f"{node.lineno}: trt.{node.value.attr}.{node.attr} is not in TensorRT 11")
            owner = VARIABLES.get(_base_name(node.value) or "")
            if owner is not None and node.attr not in CLASSES[owner]:
                problems.append(f"{node.lineno}: {owner}.{node.attr} is not in TensorRT 11 (or not in tests/tensorrt_api.py)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr"):
            for argument in node.args[1:2]:
                if isinstance(argument, ast.Constant) and argument.value in REMOVED:
                    problems.append(f"{node.lineno}: {node.func.id}(..., {argument.value!r}) names a removed TensorRT name")
    return problems


@pytest.mark.parametrize("path", TENSORRT_CODE, ids=lambda p: p.name)
def test_our_tensorrt_code_uses_only_tensorrt_11_names(path: Path) -> None:
    assert tensorrt_uses(path.read_text()) == []


def test_the_check_sees_what_our_code_calls() -> None:
    """The variable names the check reads by are the ones the code uses: it is not checking nothing."""
    source = "\n".join(path.read_text() for path in TENSORRT_CODE)
    for call in ("config.set_timing_cache(", "context.set_tensor_address(", "builder.build_serialized_network(",
                 "engine.get_tensor_dtype(", "trt.BuilderFlag.TF32", "inspector.get_engine_information("):
        assert call in source


@pytest.mark.parametrize(
    ("planted", "found"),
    [
        ("config.set_flag(trt.BuilderFlag.FP16)", "trt.BuilderFlag.FP16 is not in TensorRT 11"),
        ("config.set_flag(getattr(trt.BuilderFlag, 'BF16'))", "names a removed TensorRT name"),
        ("size = engine.device_memory_size", ".device_memory_size was removed"),
        ("flag = trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "EXPLICIT_BATCH"),
        ("fast = builder.platform_has_fast_fp16", "platform_has_fast_fp16"),
        ("context.execute_async_v2([], 0)", "execute_async_v2"),
    ],
)
def test_a_planted_removed_name_is_caught(planted: str, found: str) -> None:
    problems = tensorrt_uses(f"def f(trt, config, engine, builder, context):\n    {planted}\n")
    assert any(found in problem for problem in problems), problems


def test_the_stand_in_has_exactly_the_tensorrt_11_names() -> None:
    trt = fake_tensorrt.make_module()
    public = {name for name in vars(trt) if not name.startswith("_") or name == "__version__"} - {"options"}
    assert public == set(MODULE)
    for name, members in MODULE.items():
        if members and name != "Logger":
            assert {m for m in vars(getattr(trt, name)) if not m.startswith("_")} == members, name
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "BF16")
