"""A MobileVLM checkpoint as llama.cpp runs it: the LLM as Q4_0 / Q4_K_M / Q8_0 GGUFs and the vision tower
plus projector as an mmproj GGUF, made with llama.cpp's own tools (its MobileVLM recipe,
docs/multimodal/MobileVLM.md), for the speed race in `mobilevlm-bench --llamacpp`.

The LLM goes through `llamacpp_quality.convert` / `quantize` (convert_hf_to_gguf.py, our venv).
The image encoder goes through `tools/mtmd/legacy-models/llava_surgery_v2.py` and
`convert_image_encoder_to_gguf.py --projector-type ldpv2`, which need transformers 4.x: they run in
a side venv (see `converter_python`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from typing import Callable, Dict

from ..runtime.errors import CheckpointError

# The pins of llama.cpp's requirements-convert_legacy_llama.txt, and torch 2.13.0 (the CPU wheel
# this project's venv uses; any other version is a multi-gigabyte download).
CONVERTER_REQUIREMENTS = ("torch==2.13.0", "transformers==4.57.6", "numpy", "safetensors",
                          "sentencepiece", "protobuf", "pyyaml", "tqdm", "requests")
QUANTS = (("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0"), ("Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
          ("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"))
MMPROJ = "mmproj-model-f16.gguf"
LEGACY = os.path.join("tools", "mtmd", "legacy-models")


def check_llamacpp_src(llamacpp_src: str) -> str:
    """The llama.cpp source folder, or a CheckpointError saying what is missing."""
    needed = ["convert_hf_to_gguf.py", "gguf-py", os.path.join(LEGACY, "llava_surgery_v2.py"),
              os.path.join(LEGACY, "convert_image_encoder_to_gguf.py")]
    missing = [n for n in needed if not os.path.exists(os.path.join(llamacpp_src or "", n))]
    if missing:
        raise CheckpointError(f"--llamacpp-src {llamacpp_src!r}: no {', '.join(missing)} there (give the "
                              "llama.cpp source folder, e.g. llama-cpp-python's sdist vendor/llama.cpp)")
    return os.path.abspath(llamacpp_src)


def gguf_paths(folder: str) -> Dict[str, str]:
    """Quant name -> LLM GGUF path in a conversion folder (the mmproj sits beside them as MMPROJ)."""
    return {name: os.path.join(folder, f"model-{name}.gguf") for name, _ in QUANTS}


def converter_python(work: str, log: Callable[[str], None] = print) -> str:
    """The python of a side venv with transformers 4.x for llama.cpp's legacy converters, made once.

    A stamp file lists what was installed: a venv from a different list is rebuilt."""
    folder = os.path.join(work, "llamacpp-convert-venv")
    python = os.path.join(folder, "bin", "python")
    stamp = os.path.join(folder, "installed.json")
    try:
        with open(stamp) as f:
            if json.load(f) == list(CONVERTER_REQUIREMENTS) and os.path.isfile(python):
                return python
    except (OSError, ValueError):
        pass
    log(f"making the converter venv {folder} (transformers 4.x for llama.cpp's legacy converters) ...")
    shutil.rmtree(folder, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(folder)
    run = subprocess.run([python, "-m", "pip", "install", "-q", *CONVERTER_REQUIREMENTS],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise CheckpointError("could not install the converter venv:\n" + run.stderr[-2000:])
    with open(stamp, "w") as f:
        json.dump(list(CONVERTER_REQUIREMENTS), f)
    return python


def write_clip_vision_folder(checkpoint: str, folder: str) -> None:
    """The checkpoint's vision tower as a CLIPVisionModel folder (config.json + model.safetensors,
    transformers 4.x names `vision_model.*`): what convert_image_encoder_to_gguf.py reads.

    V2 checkpoints bundle the tower and only name the CLIP it came from; V1 ones point at a CLIP folder.
    """
    from safetensors.torch import save_file

    from .loader import TOWER_PREFIX, read_config, read_tensors, resolve

    src = resolve(checkpoint)
    config, clip_dir = read_config(src)
    tensors = read_tensors(src)
    tower = {k[len(TOWER_PREFIX):]: v for k, v in tensors.items() if k.startswith(TOWER_PREFIX)}
    if not tower and clip_dir:
        tower = {k: v for k, v in read_tensors(clip_dir).items() if k.startswith("vision_model.")}
    if not tower:
        raise CheckpointError(f"{checkpoint}: no vision tower tensors")
    os.makedirs(folder, exist_ok=True)
    # The tower computes in fp32 in the reference; the converter stores f16 itself.
    save_file({k: v.float().contiguous() for k, v in tower.items() if not k.endswith("position_ids")},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**config.vision, "model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"],
                   "_name_or_path": config.vision_tower}, f, indent=2)


def _run(cmd, env, what: str) -> None:
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise CheckpointError(f"llama.cpp's {what} failed:\n" + (run.stderr or run.stdout)[-2000:])


def convert_mmproj(checkpoint: str, llamacpp_src: str, out: str, python: str) -> None:
    """Tower + projector -> llama.cpp's f16 mmproj GGUF, by llama.cpp's MobileVLM V2 recipe."""
    from .loader import read_config, resolve

    src = resolve(checkpoint)
    config, _ = read_config(src)
    if config.projector != "ldpnetv2":
        raise CheckpointError(f"{checkpoint}: a {config.version} checkpoint; the llama.cpp race takes V2 "
                              "(projector ldpnetv2)")
    env = dict(os.environ, PYTHONPATH=os.path.join(llamacpp_src, "gguf-py"))
    with tempfile.TemporaryDirectory(prefix="mobilevlm_mmproj_") as tmp:
        # The surgery writes llava.projector beside the shards: a folder of links keeps the checkpoint
        # untouched (it only reads the shards).
        links = os.path.join(tmp, "checkpoint")
        os.makedirs(links)
        for name in os.listdir(src):
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(links, name))
        _run([python, os.path.join(llamacpp_src, LEGACY, "llava_surgery_v2.py"), "-C", "-m", links],
             env, "llava_surgery_v2.py")
        clip = os.path.join(tmp, "clip")
        write_clip_vision_folder(src, clip)
        _run([python, os.path.join(llamacpp_src, LEGACY, "convert_image_encoder_to_gguf.py"), "-m", clip,
              "--clip-model-is-vision", "--llava-projector", os.path.join(links, "llava.projector"),
              "--output-dir", tmp, "--projector-type", "ldpv2"], env, "convert_image_encoder_to_gguf.py")
        shutil.move(os.path.join(tmp, MMPROJ), out)


def prepare(checkpoint: str, llamacpp_src: str, folder: str, threads: int = 0,
            log: Callable[[str], None] = print) -> Dict[str, str]:
    """The GGUFs for `checkpoint` in `folder`, made once: quant name -> LLM GGUF; the mmproj is
    folder/MMPROJ and the tokenizer folder/tokenizer.model (the worker tokenizes with ours)."""
    from .loader import resolve
    from .quant.llamacpp_quality import convert, quantize

    llamacpp_src = check_llamacpp_src(llamacpp_src)
    os.makedirs(folder, exist_ok=True)
    paths = gguf_paths(folder)
    mmproj = os.path.join(folder, MMPROJ)
    if not os.path.isfile(mmproj):
        python = converter_python(os.path.dirname(os.path.abspath(folder)), log)
        log(f"converting the vision tower + LDPv2 projector -> {mmproj} ...")
        convert_mmproj(checkpoint, llamacpp_src, mmproj + ".part", python)
        os.replace(mmproj + ".part", mmproj)
    if not all(os.path.isfile(p) for p in paths.values()):
        from .quant.quality import load_language_model

        f32 = os.path.join(folder, "model-f32.gguf")
        if not os.path.isfile(f32):
            log(f"converting the LLM -> {f32} (llama.cpp's convert_hf_to_gguf.py) ...")
            convert(load_language_model(checkpoint), llamacpp_src, f32 + ".part")
            os.replace(f32 + ".part", f32)
        for name, ftype in QUANTS:
            if not os.path.isfile(paths[name]):
                log(f"quantizing -> {paths[name]} ...")
                quantize(f32, paths[name] + ".part", ftype, threads)
                os.replace(paths[name] + ".part", paths[name])
        os.remove(f32)  # 4 bytes a weight, needed only to quantize
    tokenizer = os.path.join(folder, "tokenizer.model")
    if not os.path.isfile(tokenizer):
        shutil.copy(os.path.join(resolve(checkpoint), "tokenizer.model"), tokenizer)
    return paths


def main(argv=None) -> int:
    """python -m mobilevlm_ros.model.llamacpp_vlm CHECKPOINT LLAMACPP_SRC OUT: the conversion alone."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("llamacpp_src")
    p.add_argument("out")
    a = p.parse_args(argv)
    print(json.dumps(prepare(a.checkpoint, a.llamacpp_src, a.out, log=lambda s: print(s, file=sys.stderr))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
