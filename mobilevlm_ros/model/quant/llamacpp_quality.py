"""The same measurement for llama.cpp: the same fp32 weights, converted with llama.cpp's own
converter, quantized by llama.cpp, and scored on the same token ids, token by token.

Needs llama-cpp-python (built from its sdist: no Linux wheel on PyPI) and llama.cpp's
`convert_hf_to_gguf.py` with its `gguf-py` beside it (the sdist's vendor/llama.cpp folder).
`bytes` is the whole .gguf file (llama.cpp keeps the embedding table in it); `read_bytes`, the
weights a decode step reads, comes from the file's tensor types (a quant name says too little: on
576-wide SmolLM2, "Q4_K_M" falls back to q5_0 / q8_0 on most matrices).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import time
from typing import List

import numpy as np
import torch

from ...runtime.errors import CheckpointError
from ..llama_folder import write_llama_folder
from .quality import LanguageModel, score_teacher_forced

# llama.cpp's own names for the formats compared (llama_ftype values of llama.h).
FORMATS = (("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"), ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0"),
           ("Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M"))


def convert(lm: LanguageModel, llamacpp_src: str, out: str) -> None:
    """fp32 weights -> an f32 .gguf with llama.cpp's converter."""
    converter = os.path.join(llamacpp_src or "", "convert_hf_to_gguf.py")
    if not os.path.isfile(converter):
        raise CheckpointError(f"--llamacpp-src {llamacpp_src!r}: no convert_hf_to_gguf.py there "
                              "(give the llama.cpp source folder, "
                              "e.g. llama-cpp-python's sdist vendor/llama.cpp)")
    with tempfile.TemporaryDirectory(prefix="mobilevlm_llamacpp_") as folder:
        write_llama_folder(lm.llm, folder, torch.float32, lm.write_tokenizer)
        env = dict(os.environ, PYTHONPATH=os.path.join(llamacpp_src, "gguf-py"))  # the converter's own gguf
        run = subprocess.run([sys.executable, converter, folder, "--outtype", "f32", "--outfile", out],
                             capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise CheckpointError("llama.cpp's converter failed:\n" + run.stderr[-2000:])


def quantize(f32: str, out: str, ftype_name: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = threads
    if llama_cpp.llama_model_quantize(f32.encode(), out.encode(), ctypes.byref(params)) != 0:
        raise CheckpointError(f"llama.cpp could not quantize to {ftype_name}")


def weights_read_per_token(path: str) -> int:
    """Bytes of every tensor in the .gguf but the token embeddings, which a step only gathers a row of
    (unless the output layer is tied to them: then they are read whole, as the output matrix)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def tensor_types(path: str) -> dict:
    """How many tensors of each type the file holds, e.g. {"Q4_K": 150, "Q6_K": 31, "F32": 61}."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors))


def score(path: str, lm: LanguageModel, windows: List[List[int]], reference_choices: List[List[int]],
          threads: int) -> dict:
    """Teacher-forced, one token per eval, by the loop that scores our decoder."""
    from llama_cpp import Llama

    # as onnxruntime's 0; llama-cpp-python's own default is half the cores
    threads = threads or os.cpu_count()
    model = Llama(model_path=path, n_ctx=max(len(w) for w in windows) + 1, n_threads=threads,
                  n_threads_batch=threads, logits_all=True, verbose=False)

    def step(token: int) -> np.ndarray:
        model.eval([token])
        return np.asarray(model.scores[model.n_tokens - 1])

    def start(token: int) -> np.ndarray:
        model.reset()
        return step(token)

    return score_teacher_forced(lm, start, step, windows, reference_choices)


def quantized(lm: LanguageModel, llamacpp_src: str, threads: int):
    """(name, .gguf path, its facts: file bytes, bytes read per token, tensor types) for each of FORMATS,
    converted and quantized by llama.cpp from `lm`'s fp32 weights; each file is gone after its turn."""
    with tempfile.TemporaryDirectory(prefix="mobilevlm_gguf_") as tmp:
        f32 = os.path.join(tmp, "model-f32.gguf")
        convert(lm, llamacpp_src, f32)
        for name, ftype in FORMATS:
            path = os.path.join(tmp, f"model-{name}.gguf")
            quantize(f32, path, ftype, threads)
            yield name, path, {"bytes": os.path.getsize(path), "read_bytes": weights_read_per_token(path),
                               "tensor_types": tensor_types(path)}
            os.remove(path)


def measure_llamacpp_shape(lm: LanguageModel, llamacpp_src: str, steps: int = 64, threads: int = 0,
                           log=print) -> list:
    """Bytes read per decode token and decode tokens/s of Q8_0, Q4_0 and Q4_K_M of `lm` (a synthetic
    checkpoint of a real shape): the llama.cpp rows of mobilevlm-quality --shape."""
    from llama_cpp import Llama

    rows = []
    threads = threads or os.cpu_count()
    for name, path, facts in quantized(lm, llamacpp_src, threads):
        model = Llama(model_path=path, n_ctx=steps + 2, n_threads=threads, n_threads_batch=threads,
                      verbose=False)
        ids = np.random.default_rng(0).integers(3, model.n_vocab(), steps + 1).tolist()
        model.eval(ids[:1])
        t0 = time.perf_counter()
        for i in ids[1:]:
            model.eval([i])
        row = {"name": f"llama.cpp {name}", "decode_tok_s": steps / (time.perf_counter() - t0), **facts}
        del model
        log(f"{row['name']} at this shape: {row['read_bytes'] / 2**20:.0f} MB read per token, "
            f"{row['decode_tok_s']:.1f} tok/s ({row['tensor_types']})")
        rows.append(row)
    return rows


def measure_llamacpp(lm: LanguageModel, windows: List[List[int]], reference_choices: List[List[int]],
                     llamacpp_src: str, threads: int = 0, log=print) -> list:
    rows = []
    for name, path, facts in quantized(lm, llamacpp_src, threads):
        row = {"name": f"llama.cpp {name}", "precision": name, "config": {}, "default": False,
               **score(path, lm, windows, reference_choices, threads), **facts}
        log(f"{row['name']}: ppl {row['ppl']:.3f}, agreement {row['agreement']:.3f}, "
            f"{row['read_bytes'] / 2**20:.0f} MB read per token ({row['tensor_types']}), "
            f"{row['decode_tok_s']:.0f} tok/s")
        rows.append(row)
    return rows
