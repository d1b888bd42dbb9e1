"""The two ONNX engines: vision (pixels -> image embeddings) and decoder (embeddings -> logits, KV cache).

The decoder keeps past and present KV in one preallocated buffer per layer: GroupQueryAttention
writes the new positions in place when its `past` input and `present` output are the same
memory, so a decode step copies no cache and allocates nothing. Rewinding to a prefix (the
image part of the prompt, to ask a second question about the same frame) is setting a length.

The buffer has `rows` rows, one sequence each (several cameras): a sequence is prefilled alone
into its row, then decodes together with the other rows, one decoder call per token for all
(decode is memory-bound: the weights are read once for every row).
"""

from __future__ import annotations

from typing import List, Sequence

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
                 profile_prefix: str = "", rows: int = 1):
        """rows: sequences the cache holds at once (each decodes alone or batched with the others)."""
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
        shape = (rows, m["num_kv_heads"], self.max_length, m["head_dim"])
        self.kv_bytes_per_position = (2 * layers * m["num_kv_heads"] * m["head_dim"]
                                      * np.dtype(kv_dtype).itemsize)
        self._device = "cuda" if on_gpu else "cpu"
        if on_gpu:
            self.kv = [ort.OrtValue.ortvalue_from_shape_and_type(shape, kv_dtype, "cuda", 0)
                       for _ in range(2 * layers)]
        else:
            # np.zeros maps pages lazily: an unused row costs no memory. A row's first prefill makes
            # all of it resident (measured: GroupQueryAttention writes the whole row then).
            self._kv_host = [np.zeros(shape, kv_dtype) for _ in range(2 * layers)]
            self.kv = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._kv_host]
        self._kv_dtype, self._logits_dtype = kv_dtype, logits_dtype
        self._row_bytes = int(np.prod(shape[1:])) * np.dtype(kv_dtype).itemsize
        self.embeds = np.zeros((max(self.max_length, rows), self.hidden), self.embed_dtype)
        self._ones = np.ones((1, self.max_length), np.int64)  # a single row's mask: all its positions
        self._step_mask = np.zeros(rows * self.max_length, np.int64)  # a batched step's [B, T] mask
        self.logits = np.zeros((rows, 1, self.vocab), logits_dtype)
        # Bound once: one binding per row (prefill, and decode of that row alone) and one per batch
        # size B (rows 0..B-1 decode together). Each points into the same cache buffers.
        self._row_bindings = [self._bind(row, 1) for row in range(rows)]
        self._batch_bindings = {b: self._bind(0, b) for b in range(2, rows + 1)}
        self.lengths = [0] * rows  # positions filled in each row's cache

    def _bind(self, first_row: int, batch: int) -> ort.IOBinding:
        """An IOBinding over cache rows first_row..first_row+batch-1 and their logits."""
        binding = self.session.io_binding()
        shape = [batch] + list(self.kv[0].shape()[1:])
        offset = first_row * self._row_bytes
        for names, i in zip(zip(self.past, self.present), range(0, len(self.kv), 2)):
            for (past, present), value in zip(zip(*names), self.kv[i:i + 2]):
                ptr = value.data_ptr() + offset
                binding.bind_input(past, self._device, 0, self._kv_dtype, shape, ptr)
                binding.bind_output(present, self._device, 0, self._kv_dtype, shape, ptr)
        binding.bind_output(self.names["logits"], "cpu", 0, self._logits_dtype, [batch, 1, self.vocab],
                            self.logits[first_row:].ctypes.data)
        if batch > 1:  # a step's inputs_embeds: one token per row, always the same place and shape
            binding.bind_input(self.names["inputs_embeds"], "cpu", 0, self.embed_dtype,
                               [batch, 1, self.hidden], self.embeds.ctypes.data)
        return binding

    @property
    def length(self) -> int:
        """Positions filled in row 0 (the row a single sequence uses)."""
        return self.lengths[0]

    def _dtype(self, arg) -> type:
        if arg.type not in _NP_TYPES:
            raise EngineError(f"engine file {self.file}: {arg.name} is {arg.type}; expected float or float16")
        return _NP_TYPES[arg.type]

    def rewind(self, length: int, row: int = 0) -> None:
        """Forget every position of `row` from `length` on (their slots are overwritten by the next run)."""
        if not 0 <= length <= self.lengths[row]:
            raise ValueError(f"cannot rewind to {length}, cache row {row} holds {self.lengths[row]}")
        self.lengths[row] = length

    def run(self, embeds: np.ndarray, row: int = 0) -> np.ndarray:
        """Append `embeds` (n, H) after `row`'s cached positions, that row alone (a prefill, or one
        sequence's decode step); returns the last position's logits (vocab,)."""
        n = embeds.shape[0]
        total = self.lengths[row] + n
        if total > self.max_length:
            raise PromptError(f"context full: {total} positions needed, the engine holds {self.max_length}")
        self.embeds[:n] = embeds
        io = self._row_bindings[row]
        io.bind_input(self.names["inputs_embeds"], "cpu", 0, self.embed_dtype, [1, n, self.hidden],
                      self.embeds.ctypes.data)
        io.bind_input(self.names["attention_mask"], "cpu", 0, np.int64, [1, total], self._ones.ctypes.data)
        run_session(self.session, self.file, lambda: self.session.run_with_iobinding(io))
        self.lengths[row] = total
        return self.logits[row, 0]

    def step(self, rows: Sequence[int], embeds: np.ndarray) -> np.ndarray:
        """One new position for each of `rows` (embeds (k, H), in that order), all in one decoder
        call over rows 0..max(rows); returns their logits (k, vocab).

        The graph takes rows 0..B-1 only, so a row in that range with no sequence runs a dummy token
        (zeros) written just past its cached positions, which it keeps: that costs one row of
        compute, where moving caches to close the gap would copy them."""
        if len(rows) == 1:
            return self.run(embeds, rows[0])[None]
        batch = max(rows) + 1
        lengths = np.array(self.lengths[:batch]) + 1  # each row's length with its new position
        for row in rows:
            if lengths[row] > self.max_length:
                raise PromptError(f"context full: {lengths[row]} positions needed, "
                                  f"the engine holds {self.max_length}")
        idle = [r for r in range(batch) if r not in rows]
        for r in idle:
            if lengths[r] > self.max_length:  # a full idle row: its dummy goes to position 0
                lengths[r], self.lengths[r] = 1, 0  # and its cached positions are no longer valid
        self.embeds[:batch] = 0
        self.embeds[list(rows)] = embeds
        total = int(lengths.max())
        # GroupQueryAttention reads each row's length from its mask's sum (right padding).
        mask = self._step_mask[:batch * total].reshape(batch, total)
        np.less(np.arange(total)[None, :], lengths[:, None], out=mask, casting="unsafe")
        io = self._batch_bindings[batch]
        io.bind_input(self.names["attention_mask"], "cpu", 0, np.int64, [batch, total], mask.ctypes.data)
        run_session(self.session, self.file, lambda: self.session.run_with_iobinding(io))
        for row in rows:
            self.lengths[row] += 1
        return self.logits[list(rows), 0]
