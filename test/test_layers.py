"""Each layer imports without the layers above it (ARCHITECTURE.md):

    runtime   numpy, onnxruntime, sentencepiece, Pillow: no ROS, no torch, nothing of ours above it
    demo      the scene world: the runtime and OpenCV
    ros       the node, worker, bridge, bags, replay: rclpy and the runtime, never torch
    model     the export side: torch and the runtime, no ROS
    regress   mobilevlm-regress's replays on Ray, comparison and report: the ROS layer and the runtime
              (rclpy and Ray imported when a run starts), never torch
    tools     console entry points: they import their layer when they run, so even the export
              and ROS tools load (and print --help) without torch or rclpy
The demo trainer (training/, torch) is not part of the package: nothing in it may import it.
Every module of a layer is imported in a fresh interpreter where the forbidden modules fail to import.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

ABOVE_RUNTIME = ["mobilevlm_ros.ros", "mobilevlm_ros.model", "mobilevlm_ros.tools", "mobilevlm_ros.demo",
                 "mobilevlm_ros.regress", "training"]
LAYERS = {
    "mobilevlm_ros.runtime": ["rclpy", "torch", "transformers", "cv2", *ABOVE_RUNTIME],
    "mobilevlm_ros.demo": ["rclpy", "torch", "transformers", "mobilevlm_ros.ros", "mobilevlm_ros.model",
                           "mobilevlm_ros.tools", "mobilevlm_ros.regress", "training"],
    "mobilevlm_ros.ros": ["torch", "transformers", "mobilevlm_ros.model", "mobilevlm_ros.tools",
                          "mobilevlm_ros.regress", "training"],
    "mobilevlm_ros.model": ["rclpy", "mobilevlm_ros.ros", "mobilevlm_ros.tools", "mobilevlm_ros.regress",
                            "training"],
    "mobilevlm_ros.regress": ["rclpy", "ray", "torch", "transformers", "mobilevlm_ros.model",
                              "mobilevlm_ros.tools", "training"],
    "mobilevlm_ros.tools": ["rclpy", "torch", "transformers", "training"],
}

PROBE = """
import importlib, pkgutil, sys
layer, blocked = sys.argv[1], sys.argv[2:]
for name in blocked:
    sys.modules[name] = None  # importing it (or anything under it) now raises ImportError
package = importlib.import_module(layer)
names = [m.name for m in pkgutil.walk_packages(package.__path__, layer + ".")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


# What a layer itself needs beyond the runtime's libraries: an interpreter without it (the ARM image
# of `make test-arm` has neither) cannot import that layer at all, with or without the rule.
NEEDS = {"mobilevlm_ros.ros": "rclpy", "mobilevlm_ros.model": "torch"}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_without_the_layers_above_it(layer):
    if layer in NEEDS:
        pytest.importorskip(NEEDS[layer], reason=f"{layer} needs {NEEDS[layer]}, which this Python lacks")
    r = subprocess.run([sys.executable, "-c", PROBE, layer, *LAYERS[layer]], capture_output=True, text=True)
    assert r.returncode == 0, f"{layer} imports something it must not:\n{r.stderr[-1500:]}"
    assert int(r.stdout.split()[-1]) >= 2  # it really walked the layer's modules


def test_the_probe_catches_a_forbidden_import():
    """A layer that does import a blocked module fails the probe (torch from the export side)."""
    pytest.importorskip("torch", reason="the export side needs torch, which this interpreter lacks")
    r = subprocess.run([sys.executable, "-c", PROBE, "mobilevlm_ros.model", "torch"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "torch" in r.stderr


def test_the_export_side_has_no_import_circle():
    """model/ and model/quant/ import each other one way only (imports inside functions included):
    the rotation once borrowed the exporter's Llama folder writer while the exporter imported it."""
    import ast
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mobilevlm_ros", "model")
    graph = {}
    folders = ((root, "mobilevlm_ros.model"), (os.path.join(root, "quant"), "mobilevlm_ros.model.quant"))
    for folder, package in folders:
        for name in os.listdir(folder):
            if not name.endswith(".py") or name == "__init__.py":
                continue
            module = f"{package}.{name[:-3]}"
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            targets = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets.add(".".join(base + ([node.module] if node.module else [])))
            graph[module] = {t for t in targets if t.startswith("mobilevlm_ros.model")}

    def cycle_from(start, path):
        for nxt in graph.get(path[-1], ()):
            if nxt == start:
                return path + [nxt]
            if nxt not in path and nxt in graph:
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None

    cycles = [c for c in (cycle_from(m, [m]) for m in graph) if c]
    assert not cycles, " -> ".join(cycles[0])
