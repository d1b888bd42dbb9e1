"""Shared fixtures: synthetic checkpoints and their exported engines, made once per test session.

Everything is built here from random weights (no downloads): tiny configs of the real
architecture, V2 (LDPv2) and V1 (LDP).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "42")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """checkpoints(name, layout="", weights_format="safetensors") -> folder (cached)."""
    from mobilevlm_ros.model.synthetic import write_synthetic

    made = {}

    def get(name: str, layout: str = "", weights_format: str = "safetensors") -> str:
        key = (name, layout, weights_format)
        if key not in made:
            out = tmp_path_factory.mktemp(f"ckpt-{name}-{layout or 'default'}-{weights_format}")
            made[key] = write_synthetic(name, str(out), layout=layout, weights_format=weights_format)
        return made[key]

    return get


@pytest.fixture(scope="session")
def engines(tmp_path_factory, checkpoints):
    """engines(name, precision="fp32") -> engine directory exported from checkpoints(name) (cached)."""
    from mobilevlm_ros.model.export import export

    made = {}

    def get(name: str, precision: str = "fp32") -> str:
        key = (name, precision)
        if key not in made:
            out = tmp_path_factory.mktemp(f"engine-{name}-{precision}")
            # Block 32: the tiny model's matrices are 64 wide, too narrow for the default block of 128.
            made[key] = export(checkpoints(name), str(out), precision, "cpu", model_id=f"synthetic/{name}",
                               block_size=32, log=lambda s: None)
        return made[key]

    return get


@pytest.fixture(scope="session")
def reference(checkpoints):
    """reference(name) -> the PyTorch reference model loaded from checkpoints(name) (cached)."""
    from mobilevlm_ros.model.loader import load_checkpoint

    made = {}

    def get(name: str):
        if name not in made:
            made[name] = load_checkpoint(checkpoints(name))
        return made[name]

    return get
