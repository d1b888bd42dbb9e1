"""config/vlm.yaml against the node's declared parameters, and the launch file where launch_ros exists."""

from __future__ import annotations

import importlib.util
import os

import pytest
import yaml

from mobilevlm_ros.ros import params as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _yaml_params() -> dict:
    with open(os.path.join(ROOT, "config", "vlm.yaml")) as f:
        doc = yaml.safe_load(f)
    (section,) = doc.values()
    return section["ros__parameters"]


def test_params_file_keys_are_all_declared_and_values_valid():
    values = _yaml_params()
    unknown = set(values) - set(P.BY_NAME)
    assert not unknown, f"config/vlm.yaml has keys the node does not declare: {unknown}"
    missing = set(P.BY_NAME) - set(values)
    assert not missing, f"config/vlm.yaml does not document: {missing}"
    for name, value in values.items():
        spec = P.BY_NAME[name]
        assert type(value) is type(spec.default), f"{name}: {value!r} is not a {type(spec.default).__name__}"
        if name != "engine_dir":
            assert P.check(name, value) == "", f"{name}: {P.check(name, value)}"
        if spec.range is not None:
            assert spec.range[0] <= value <= spec.range[1], f"{name}={value} outside {spec.range}"


def test_params_file_loads_into_a_real_node(tmp_path, engines):
    """rclpy itself reads the file (as --params-file does) and the node accepts every value."""
    rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")
    from rclpy.lifecycle import TransitionCallbackReturn

    from mobilevlm_ros.ros.node import VLMNode

    context = rclpy.Context()
    params_file = os.path.join(ROOT, "config", "vlm.yaml")
    rclpy.init(context=context, args=["--ros-args", "--params-file", params_file, "-p",
                                      f"engine_dir:={engines('tiny', 'fp32')}"])
    try:
        node = VLMNode(context=context)
        for name, value in _yaml_params().items():
            if name != "engine_dir":
                assert node.get_parameter(name).value == value
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        node.trigger_cleanup()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_params_table_checks_refuse_bad_values():
    assert "backend: must be one of auto" in P.check("backend", "gpu")
    assert "unique" in P.check("cameras", ["a", "a"])
    assert "invalid camera" in P.check("cameras", ["front cam"])
    assert "raw" in P.check("transports", ["h264"])
    assert "best_effort" in P.check("qos_reliability", "sometimes")
    assert "not a directory" in P.check("engine_dir", "/no/such/dir")
    assert "caption_prompt: the question is empty" == P.check("caption_prompt", "  ")
    assert P.check("cameras", ["front", "rear/left"]) == P.check("engine_dir", "") == ""
    assert P.camera_transports(["a", "b"], ["compressed"]) == [("a", "compressed"), ("b", "compressed")]
    with pytest.raises(ValueError):
        P.camera_transports(["a", "b", "c"], ["raw", "compressed"])


NO_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is None


@pytest.mark.skipif(NO_LAUNCH_ROS, reason="launch_ros is not on PyPI; checked on real ROS installs")
def test_launch_file_describes_the_node():
    spec = importlib.util.spec_from_file_location("vlm_launch", os.path.join(ROOT, "launch", "vlm.launch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    names = {a.name for a in ld.entities if hasattr(a, "name") and isinstance(getattr(a, "name"), str)}
    assert {"engine_dir", "camera_topic", "namespace", "params_file", "backend"} <= names
