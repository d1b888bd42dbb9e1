"""mobilevlm_ros: pip install of the Python package (on a ROS install, colcon builds it with
CMakeLists.txt)."""

from setuptools import find_packages, setup

setup(
    name="mobilevlm_ros",
    version="0.1.0",
    description="MobileVLM (V1/V2) on a robot: ONNX Runtime / TensorRT engines, captions and grounded "
                "answers",
    license="Apache-2.0",
    packages=find_packages(include=["mobilevlm_ros", "mobilevlm_ros.*"]),
    # The default calibration text (model/quant/calibration.py).
    package_data={"mobilevlm_ros.model.quant": ["data/*.txt"]},
    # Explicit root: makes `pip install -e .` a plain path entry (the repository root on sys.path)
    # instead of setuptools' import-hook finder. The interfaces that `make setup` generates live in
    # the venv's site-packages/mobilevlm_ros, and our __init__.py joins the two folders with
    # pkgutil.extend_path, which only sees folders on sys.path.
    package_dir={"": "."},
    python_requires=">=3.10",
    # Robot side: no torch. onnxruntime comes from an extra because Jetson uses NVIDIA's
    # onnxruntime-gpu wheel.
    # llguidance: typed answers' grammars (a Rust wheel, no dependencies; protobuf edits the
    # sentencepiece model for it, and onnxruntime needs protobuf anyway).
    install_requires=["numpy>=1.24", "sentencepiece>=0.2", "pillow>=10", "opencv-python-headless>=4.8",
                      "psutil>=5", "llguidance==1.9.1", "protobuf>=3.20"],
    extras_require={
        "cpu": ["onnxruntime==1.32.0"],
        # Export side (the machine that turns checkpoints into engines). torch is pinned: any
        # other version downloads gigabytes here.
        "export": [
            "torch==2.13.0",
            "transformers==5.24.0",
            "safetensors==0.8.0",
            "onnx==1.23.2",
            "onnxscript==0.7.2",
            "onnxruntime==1.32.0",
            "onnxruntime-genai==0.18.0",
            "huggingface-hub>=0.30",
            "protobuf>=4",
            # mobilevlm-quality: transformers reads .gguf checkpoints (real trained weights offline)
            # with these.
            "gguf==0.19.0",
            "accelerate==1.15.0",
            # mobilevlm-export --quant "int4 GPTQ ...": Olive's GPTQ writes the checkpoint format
            # (quant_method "olive") that onnxruntime-genai 0.18's builder reads; pinned together.
            "olive-ai==0.13.0",
            # --quant "int4 AutoRound ...": model/quant/autoround.py reads its int_sym grid and the
            # scale it leaves on each layer (AUTOROUND there): pinned.
            "auto-round==0.16.1",
        ],
        # mobilevlm-regress: bags replayed as Ray tasks (a workstation or a cluster, not the robot).
        "fleet": ["ray==2.60.0", "tqdm>=4.60"],
        # ruff pinned: `make test` lints with it, and its rules change between releases.
        "test": ["pytest>=8", "ruff==0.17.6"],
    },
    entry_points={
        "console_scripts": [
            "mobilevlm-export = mobilevlm_ros.tools.export_cli:main",
            "mobilevlm-caption = mobilevlm_ros.tools.caption:main",
            "mobilevlm-bench = mobilevlm_ros.tools.bench.cli:main",
            "mobilevlm-quality = mobilevlm_ros.tools.quality:main",
            "mobilevlm-replay = mobilevlm_ros.tools.replay:main",
            "mobilevlm-regress = mobilevlm_ros.tools.regress:main",
            "mobilevlm-demo-bag = mobilevlm_ros.tools.demo_bag:main",
            "vlm_node = mobilevlm_ros.ros.node:main",
        ]
    },
)
