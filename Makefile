# Set-up and the two README commands. Everything lands in .venv (Python 3.10+, here 3.11).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
BUILD  ?= build

# Tests and CI keep DDS traffic on this machine and in their own domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first and pinned: anything else would pull a multi-GB CUDA build.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,export,test]'
	touch $(STAMP)

# The main job (until the demo model exists: a synthetic tiny engine, random weights).
demo: setup
	test -f $(BUILD)/engines/tiny/manifest.json || $(PY) -m mobilevlm_ros.tools.export_cli --synthetic tiny --precision fp32 --out $(BUILD)/engines/tiny
	$(PY) -m mobilevlm_ros.tools.demo_image $(BUILD)/demo.png
	$(PY) -m mobilevlm_ros.tools.caption $(BUILD)/engines/tiny $(BUILD)/demo.png --max-tokens 24 --json

test: setup
	$(PY) -m pytest -q test

bench: setup
	$(PY) -m mobilevlm_ros.tools.bench --synthetic v2-1.7b --precision int4

clean:
	rm -rf $(BUILD)
