"""The two ONNX engines: vision (pixels -> image embeddings) and decoder (embeddings -> logits, KV cache).

The decoder keeps past and present KV in one preallocated buffer per layer: GroupQueryAttention
writes the new positions in place when its `past` input and `present` output are the same
memory, so a decode step copies no cache and allocates nothing. Rewinding to a prefix (the
image part of the prompt, to ask a second question about the same frame) is setting a length.
"""

from __future__ import annotations

from typing import List

import numpy as np
import onnxruntime as ort

from .errors import EngineError, PromptError
from .manifest import Manifest
from .sessions import make_session

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# onnxruntime's GroupQueryAttention kernels take head sizes in multiples of 16 only; others load
# and then fail at the first run. Real MobileVLM head sizes are 128 (1.4B) and 80 (2.7B).
HEAD_DIM_MULTIPLE = 16


def run_session(session: ort.InferenceSession, what: str, run):
    """Call `run()` (a session.run*); an onnxruntime failure becomes one EngineError naming the file."""
    try:
        return run()
    except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument/... types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EngineError(f"engine file {what}: onnxruntime failed while running it ({first[:300]}); "
                          "the engine does not fit this runtime: re-run mobilevlm-export") from None


class VisionEngine:
    """pixels (1, 3, S, S) float32 -> image embeddings (T, H) float32."""

    def __init__(self, manifest: Manifest, providers: List, threads: int = 0, profile_prefix: str = ""):
        self.file = manifest.files["vision"]["path"]
        self.session = make_session(manifest.path("vision"), providers, threads, profile_prefix)
        self.input = self.session.get_inputs()[0].name
        out = self.session.get_outputs()[0]
        m = manifest.model
        expected = [None, m["image_tokens"], m["hidden_size"]]
        if len(out.shape) != 3 or any(isinstance(d, int) and d != e
                                      for d, e in zip(out.shape[1:], expected[1:])):
            raise EngineError(f"engine file {manifest.files['vision']['path']}: output {out.shape} "
                              "does not match the manifest "
                              f"({m['image_tokens']} tokens x {m['hidden_size']})")

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = run_session(self.session, self.file, lambda: self.session.run(None, {self.input: pixels}))
        return np.asarray(out[0][0], dtype=np.float32)


class DecoderEngine:
    """A LLaMA decoder fed `inputs_embeds`, with an in-place KV cache of `max_length` positions."""

    def __init__(self, manifest: Manifest, providers: List, threads: int = 0, max_length: int = 0,
                 profile_prefix: str = ""):
        m, io = manifest.model, manifest.data["decoder_io"]
        self.file = manifest.files["decoder"]["path"]
        if m["head_dim"] % HEAD_DIM_MULTIPLE:
            raise EngineError(f"engine file {self.file}: head_dim {m['head_dim']} is not a multiple of "
                              f"{HEAD_DIM_MULTIPLE}, which onnxruntime's GroupQueryAttention needs; "
                              "this model cannot run here (mobilevlm-export refuses such models)")
        self.session = make_session(manifest.path("decoder"), providers, threads, profile_prefix)
        self.hidden = m["hidden_size"]
        self.vocab = m["vocab_size"]
        self.max_length = min(max_length or m["context_length"], m["context_length"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.names = io
        layers = m["num_layers"]
        self.past = [(io["past_key"] % i, io["past_value"] % i) for i in range(layers)]
        self.present = [(io["present_key"] % i, io["present_value"] % i) for i in range(layers)]
        expected_in = [io["inputs_embeds"], io["attention_mask"]] + [n for kv in self.past for n in kv]
        missing = ([n for n in expected_in if n not in inputs]
                   + [n for kv in self.present for n in kv if n not in outputs])
        if missing or io["logits"] not in outputs:
            raise EngineError(f"engine file {self.file}: graph lacks {', '.join(missing) or io['logits']} "
                              "(does not match the manifest); re-run mobilevlm-export")
        if inputs[io["inputs_embeds"]].shape[-1] != self.hidden:
            raise EngineError(f"engine file {self.file}: "
                              f"inputs_embeds width {inputs[io['inputs_embeds']].shape[-1]}, "
                              f"manifest says {self.hidden}; re-run mobilevlm-export")
        self.embed_dtype = self._dtype(inputs[io["inputs_embeds"]])
        kv_heads = inputs[self.past[0][0]].shape[1]
        if isinstance(kv_heads, int) and kv_heads != m["num_kv_heads"]:
            raise EngineError(f"engine file {self.file}: {kv_heads} KV heads, "
                              f"manifest says {m['num_kv_heads']}; re-run mobilevlm-export")
        kv_dtype = self._dtype(inputs[self.past[0][0]])
        logits_dtype = self._dtype(outputs[io["logits"]])

        on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        shape = (1, m["num_kv_heads"], self.max_length, m["head_dim"])
        self.kv_bytes_per_position = (2 * layers * m["num_kv_heads"] * m["head_dim"]
                                      * np.dtype(kv_dtype).itemsize)
        if on_gpu:
            self.kv = [ort.OrtValue.ortvalue_from_shape_and_type(shape, kv_dtype, "cuda", 0)
                       for _ in range(2 * layers)]
        else:
            # np.zeros maps pages lazily: only positions actually written count towards memory.
            self._kv_host = [np.zeros(shape, kv_dtype) for _ in range(2 * layers)]
            self.kv = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._kv_host]
        self.embeds = np.zeros((self.max_length, self.hidden), self.embed_dtype)
        self.mask = np.ones((1, self.max_length), np.int64)
        self.logits = np.zeros((1, 1, self.vocab), logits_dtype)
        self.binding = self.session.io_binding()
        for (pk, pv), (ok, ov), i in zip(self.past, self.present, range(0, 2 * layers, 2)):
            self.binding.bind_ortvalue_input(pk, self.kv[i])
            self.binding.bind_ortvalue_input(pv, self.kv[i + 1])
            self.binding.bind_ortvalue_output(ok, self.kv[i])
            self.binding.bind_ortvalue_output(ov, self.kv[i + 1])
        self.binding.bind_output(io["logits"], "cpu", 0, logits_dtype, list(self.logits.shape),
                                 self.logits.ctypes.data)
        self.length = 0  # positions filled in the cache

    def _dtype(self, arg) -> type:
        if arg.type not in _NP_TYPES:
            raise EngineError(f"engine file {self.file}: {arg.name} is {arg.type}; expected float or float16")
        return _NP_TYPES[arg.type]

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on (their slots are overwritten by the next run)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind to {length}, cache holds {self.length}")
        self.length = length

    def run(self, embeds: np.ndarray) -> np.ndarray:
        """Append `embeds` (n, H) after the cached positions; returns the last position's logits (vocab,)."""
        n = embeds.shape[0]
        total = self.length + n
        if total > self.max_length:
            raise PromptError(f"context full: {total} positions needed, the engine holds {self.max_length}")
        self.embeds[:n] = embeds
        io = self.binding
        io.bind_input(self.names["inputs_embeds"], "cpu", 0, self.embed_dtype, [1, n, self.hidden],
                      self.embeds.ctypes.data)
        io.bind_input(self.names["attention_mask"], "cpu", 0, np.int64, [1, total], self.mask.ctypes.data)
        run_session(self.session, self.file, lambda: self.session.run_with_iobinding(io))
        self.length = total
        return self.logits[0, 0]
