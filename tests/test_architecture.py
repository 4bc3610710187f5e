"""The dependency direction: engines needs none of training, realtime or calibration, and the
project's import graph has no circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import camvid_or_skip

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engines", "realtime", "calibration", "training", "fleet")
# Allowed package edges: everything may use engines; the fleet job renders and writes videos
# with the live app's render and sinks.
ALLOWED = {"realtime": {"engines"}, "calibration": {"engines"},
           "training": {"engines"}, "fleet": {"engines", "realtime"}, "engines": set()}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """module → project modules it imports anywhere in its body (deferred imports included)."""
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # "from engines import x": x may be a submodule or a name in engines/__init__.
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as a path, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (found := visit(child)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_module_graph_has_no_circle():
    graph = project_imports()
    assert len(graph) > 30
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_packages_depend_one_way():
    wrong = [(module, target) for module, targets in project_imports().items() for target in targets
             if target.split(".")[0] != module.split(".")[0]
             and target.split(".")[0] not in ALLOWED[module.split(".")[0]]]
    assert not wrong, wrong


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"training", "realtime", "calibration", "fleet", "torch", "torchvision"}:
            raise ImportError(f"blocked by the test: {name}")
sys.meta_path.insert(0, Block())
"""


def test_engines_and_the_build_path_work_without_training_realtime_and_torch(tmp_path):
    camvid = camvid_or_skip()
    script = BLOCKER + f"""
import engines, engines.build, engines.lowering, engines.frames, engines.contract, engines.metrics
from engines.contract import read_contract
from engines.frames import sample_frames
from engines.lowering import lower_precision

size, classes = read_contract(engines.DEFAULT_MODEL)
frames = sample_frames({str(camvid / "val")!r}, 4, size)
out, facts = lower_precision(engines.DEFAULT_MODEL, "int8", {str(tmp_path / "m.int8.onnx")!r}, frames,
                             method="minmax", cache_dir={str(tmp_path / "cache")!r})
fp16, _ = lower_precision(engines.DEFAULT_MODEL, "fp16", {str(tmp_path / "m.fp16.onnx")!r})
ort = "onnxruntime"
with engines.load(out, ort) as int8, engines.load(fp16, ort) as half, engines.load(backend=ort) as fp32:
    reference = fp32.infer(frames)
    print(int8.info.precision, half.info.precision, sorted(engines.BACKENDS),
          (int8.infer(frames) == reference).mean() > 0.9, (half.infer(frames) == reference).mean() > 0.999)
try:
    engines.load(engines.DEFAULT_MODEL, "torch")
except engines.EngineError as error:
    print("torch:", error)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {{"training", "realtime", "calibration", "torch"}})
print("leaked", leaked)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "int8 fp16 ['onnxruntime', 'openvino', 'tensorrt', 'torch'] True True", result.stdout
    assert lines[1].startswith("torch:") and "needs torch" in lines[1]
    assert lines[2] == "leaked []"


@pytest.mark.parametrize("module", ["engines", "engines.build"])
def test_importing_engines_imports_no_runtime(module):
    script = f"import sys, {module}; print(sorted(m for m in ('onnxruntime', 'torch', 'tensorrt', " \
             f"'onnx', 'pycuda', 'training', 'realtime', 'calibration') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
