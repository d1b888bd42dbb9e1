"""launch/vlm.launch.py's argument handling (mobilevlm_ros/ros/launch_args.py) and the model-variant
params files config/models/*.yaml, without launch_ros (not on PyPI)."""

from __future__ import annotations

import ast
import glob
import os

import pytest
import yaml

from mobilevlm_ros.ros import params as P
from mobilevlm_ros.ros.launch_args import (
    camera_remappings,
    model_files,
    node_environment,
    node_parameters,
    parse_cameras,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # laid out like the installed share
MODEL_FILES = sorted(glob.glob(os.path.join(ROOT, "config", "models", "*.yaml")))
VLM_YAML = os.path.join(ROOT, "config", "vlm.yaml")


@pytest.mark.parametrize("text", ["[front, rear]", "front,rear", " front , rear ", "['front', \"rear\"]"])
def test_cameras_list_forms(text):
    assert parse_cameras(text) == ["front", "rear"]


def test_cameras_single_nested_and_empty():
    assert parse_cameras("front") == parse_cameras("[front]") == ["front"]
    assert parse_cameras("[arm/left, on]") == ["arm/left", "on"]  # `on` stays a name, not YAML's True
    assert parse_cameras("") == parse_cameras("  ") == []  # not given: the params file's cameras


@pytest.mark.parametrize("text, named", [("[front, rear cam]", "'rear cam'"), ("front,2nd", "'2nd'"),
                                         ("[front,,rear]", "''"), ("[front, -x]", "'-x'")])
def test_invalid_camera_names_are_refused_by_name(text, named):
    with pytest.raises(ValueError, match=f"invalid camera name {named}"):
        parse_cameras(text)


def test_empty_list_and_repeated_cameras_are_refused():
    with pytest.raises(ValueError, match="names no camera"):
        parse_cameras("[]")
    with pytest.raises(ValueError, match="front named more than once"):
        parse_cameras("[front, rear, front]")


def test_per_camera_topics_remap_raw_and_compressed():
    configs = {"front_topic": "/cam0/image_raw", "rear_topic": "/cam1/image_raw",
               "rear_compressed_topic": "/cam1/image_raw/compressed", "side_topic": "/cam2/image_raw",
               "camera_topic": "", "compressed_topic": ""}
    assert camera_remappings(["front", "rear"], configs) == [
        ("front/image_raw", "/cam0/image_raw"), ("rear/image_raw", "/cam1/image_raw"),
        ("rear/image_raw/compressed", "/cam1/image_raw/compressed")]  # side is not a camera here
    assert camera_remappings(["front"], {"front_topic": ""}) == []  # empty: not remapped


def test_without_cameras_each_named_camera_is_remapped():
    """cameras:= left out: the params file's cameras, which the launch file cannot see; every camera
    a topic argument names is remapped (a rule for a camera the node lacks does nothing)."""
    configs = {"front_topic": "/cam0/image_raw", "rear_compressed_topic": "/cam1/c", "node_name": "vlm",
               "camera_topic": "", "compressed_topic": ""}
    assert camera_remappings([], configs) == [("front/image_raw", "/cam0/image_raw"),
                                              ("rear/image_raw/compressed", "/cam1/c")]


def test_legacy_camera_topic_remaps_the_default_camera():
    configs = {"camera_topic": "/cam/image_raw", "compressed_topic": "/cam/image_raw/compressed"}
    expected = [("camera/image_raw", "/cam/image_raw"),
                ("camera/image_raw/compressed", "/cam/image_raw/compressed")]
    assert camera_remappings([], configs) == expected
    assert camera_remappings(["camera", "rear"], configs) == expected
    assert camera_remappings([], {"camera_topic": "", "compressed_topic": ""}) == []
    # camera_compressed_topic is the per-camera spelling of compressed_topic, and wins over it
    assert camera_remappings(["camera"], {"camera_compressed_topic": "/a", "compressed_topic": "/b"}) == [
        ("camera/image_raw/compressed", "/a")]


def test_legacy_camera_topic_with_cameras_that_leave_out_the_default_camera_is_an_error():
    with pytest.raises(ValueError, match="camera_topic remaps the default camera 'camera'.*front_topic:="):
        camera_remappings(["front"], {"camera_topic": "/cam/image_raw"})


def test_parameters_are_params_file_then_model_file_then_overrides(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("/**:\n  ros__parameters: {}\n")
    configs = {"params_file": str(mine), "model": "demo", "engine_dir": str(tmp_path), "backend": "cpu",
               "cameras": "[front, rear]"}
    assert node_parameters(configs, ROOT) == [
        str(mine), os.path.join(ROOT, "config", "models", "demo.yaml"),
        {"engine_dir": str(tmp_path), "backend": "cpu", "cameras": ["front", "rear"]}]


def test_defaults_are_the_packaged_params_file_alone():
    assert node_parameters({}, ROOT) == [VLM_YAML]
    empty = {"params_file": "", "model": "", "engine_dir": "", "backend": "", "cameras": ""}
    assert node_parameters(empty, ROOT) == [VLM_YAML]


def test_unknown_model_lists_the_model_files():
    with pytest.raises(ValueError) as e:
        node_parameters({"model": "mobilevlm_v3"}, ROOT)
    assert "mobilevlm_v3.yaml" in str(e.value)
    assert "available: " + ", ".join(model_files(ROOT)) in str(e.value)
    assert "demo" in model_files(ROOT) and len(model_files(ROOT)) == len(MODEL_FILES)


def test_invalid_explicit_arguments_are_refused_at_launch(tmp_path):
    with pytest.raises(ValueError, match="backend: must be one of"):
        node_parameters({"backend": "gpu"}, ROOT)
    with pytest.raises(ValueError, match="engine_dir: .* is not a directory"):
        node_parameters({"engine_dir": str(tmp_path / "none")}, ROOT)
    with pytest.raises(ValueError, match="params_file: .* is not a file"):
        node_parameters({"params_file": str(tmp_path / "none.yaml")}, ROOT)
    with pytest.raises(ValueError, match="invalid camera name 'a b'"):
        node_parameters({"cameras": "[a b]"}, ROOT)


def _ros_parameters(path: str) -> dict:
    with open(path) as f:
        doc = yaml.safe_load(f)
    assert list(doc) == ["/**"], f"{path}: one section for every node name, as config/vlm.yaml"
    return doc["/**"]["ros__parameters"]


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_model_file_keys_are_declared_and_values_valid(path):
    values = _ros_parameters(path)
    unknown = set(values) - set(P.BY_NAME)
    assert not unknown, f"{path} has keys the node does not declare: {unknown}"
    assert {"engine_dir", "backend", "threads", "max_context", "max_new_tokens"} <= set(values)
    for name, value in values.items():
        spec = P.BY_NAME[name]
        assert type(value) is type(spec.default), f"{name}: {value!r} is not a {type(spec.default).__name__}"
        if name != "engine_dir":  # placeholders for engines we do not ship (checked below)
            assert P.check(name, value) == "", f"{name}: {P.check(name, value)}"
        if spec.range is not None:
            assert spec.range[0] <= value <= spec.range[1], f"{name}={value} outside {spec.range}"


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_model_file_says_how_to_make_its_engine(path):
    with open(path) as f:
        text = f.read()
    assert text.startswith("# Model variant: ")
    engine_dir = _ros_parameters(path)["engine_dir"]
    if engine_dir:  # not shipped: the comment has the command that writes it
        assert os.path.isabs(engine_dir)
        assert "mobilevlm-export mtgv/MobileVLM_V2-" in text and f"--out {engine_dir} " in text


def test_demo_model_file_fits_the_demo_engine():
    pytest.importorskip("onnxruntime")
    from mobilevlm_ros.runtime.vlm import VLM

    values = _ros_parameters(os.path.join(ROOT, "config", "models", "demo.yaml"))
    engine = os.path.join(ROOT, "engines", "demo")
    assert values["engine_dir"] == "" and values["backend"] == "cpu"
    vlm = VLM(engine, backend=values["backend"], max_length=values["max_context"])
    assert values["max_context"] == vlm.manifest.model["context_length"] == vlm.decoder.max_length
    # as the node checks on configure: the caption prompt with max_new_tokens fits the context
    vlm.encode_prompt(_ros_parameters(VLM_YAML)["caption_prompt"], values["max_new_tokens"])


def test_launch_file_declares_and_documents_its_arguments():
    """The launch file imports launch_ros, so it is read, not run: each declared argument (including
    those test_config checks where launch_ros exists) appears in its docstring."""
    with open(os.path.join(ROOT, "launch", "vlm.launch.py")) as f:
        tree = ast.parse(f.read())
    (arguments,) = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", "") == "arguments" for t in n.targets)]
    declared = {item.elts[0].value for item in arguments.elts}
    assert {"engine_dir", "camera_topic", "namespace", "params_file", "backend", "model", "cameras",
            "compressed_topic", "node_name"} <= declared
    doc = ast.get_docstring(tree)
    assert all(f"{name}:=" in doc for name in declared), [n for n in declared if f"{n}:=" not in doc]
    assert "N_topic:=" in doc and "N_compressed_topic:=" in doc


def test_large_frames_points_the_node_at_a_profile_whose_segment_holds_1080p_frames():
    import xml.etree.ElementTree as ET

    assert node_environment({}, ROOT) == {} == node_environment({"large_frames": "false"}, ROOT)
    env = node_environment({"large_frames": "True"}, ROOT)
    assert set(env) == {"FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"}  # Fast DDS 2 and 3
    (path,) = set(env.values())
    ns = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(path).getroot()
    (participant,) = root.findall("f:participant", ns)
    assert participant.get("is_default_profile") == "true"  # what rmw_fastrtps loads without being asked
    descriptors = {d.findtext("f:transport_id", None, ns): d
                   for d in root.iter(f"{{{ns['f']}}}transport_descriptor")}
    used = [descriptors[t.text] for t in participant.iter(f"{{{ns['f']}}}transport_id")]
    assert [d.findtext("f:type", None, ns) for d in used] == ["SHM", "UDPv4"]  # other hosts still reached
    assert int(used[0].findtext("f:segment_size", None, ns)) >= 4 * 1920 * 1080 * 3
    with pytest.raises(ValueError, match="large_frames"):
        node_environment({"large_frames": "yes"}, ROOT)
