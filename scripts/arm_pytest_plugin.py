"""pytest plugin for the runtime tests under ARM emulation (`make test-arm`, scripts/arm_check.py tests).

The ARM image holds only what the robot runs: numpy, onnxruntime, sentencepiece, Pillow, OpenCV
(and pytest, PyYAML). No torch, so no exporter: pytest runs with --noconftest and this plugin
stands in for test/conftest.py:
- `engines(name, precision)` hands out the engines exported on the x86 host (a copy per session,
  from $MOBILEVLM_ARM_ENGINES/<name>-<precision>); one that was not exported there is a skip;
- `checkpoints` and `reference` (torch on the host) are skips;
- every other fixture and constant of conftest.py is conftest's own, unchanged.
A test whose own code imports a module the image lacks (torch, transformers, rclpy ...) is
reported as skipped with that reason. The same missing module reached through mobilevlm_ros
stays a failure: the runtime must run without it.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

TEST_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test")
sys.path.insert(0, TEST_DIR)
import conftest as _conftest  # noqa: E402  (test/conftest.py as a plain module: its fixtures, constants)

_REPLACED = {"engines", "checkpoints", "reference"}
globals().update({k: v for k, v in vars(_conftest).items() if not k.startswith("_") and k not in _REPLACED
                  and k not in globals()})


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    """engines(name, precision="fp32") -> a copy of the engine the x86 host exported (cached)."""
    prebuilt = os.environ["MOBILEVLM_ARM_ENGINES"]
    made = {}

    def get(name: str, precision: str = "fp32") -> str:
        key = (name, precision)
        if key not in made:
            src = os.path.join(prebuilt, f"{name}-{precision}")
            if not os.path.isfile(os.path.join(src, "manifest.json")):
                pytest.skip(f"engine {name}/{precision} was not exported on the x86 host for the ARM run")
            made[key] = shutil.copytree(src, str(tmp_path_factory.mktemp(f"engine-{name}-{precision}") / "e"))
        return made[key]

    return get


@pytest.fixture(scope="session")
def checkpoints():
    pytest.skip("synthetic checkpoints and exporting need torch (x86 host only)")


@pytest.fixture(scope="session")
def reference():
    pytest.skip("the PyTorch reference needs torch (x86 host only)")


def missing_module_of_test(excinfo) -> str:
    """The module name when `excinfo` is a ModuleNotFoundError raised by an import in test code
    (a test file or conftest.py) itself, else ""."""
    if excinfo is None or not excinfo.errisinstance(ModuleNotFoundError) or not excinfo.value.name:
        return ""
    frames = [e for e in excinfo.traceback if not str(e.path).startswith("<frozen")]
    if not frames or os.path.dirname(str(frames[-1].path)) != TEST_DIR:
        return ""  # raised inside mobilevlm_ros or a library: a real failure
    name = excinfo.value.name
    return "" if name.split(".")[0] == "mobilevlm_ros" else name


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    name = missing_module_of_test(call.excinfo) if report.failed else ""
    if name:
        path, line, _ = item.reportinfo()
        report.outcome = "skipped"
        report.longrepr = (str(path), (line or 0) + 1,
                           f"Skipped: needs {name}, which the ARM image does not have")
    return report
