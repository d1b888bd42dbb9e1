"""What quantization costs on real trained weights, measured the way the robot runs the decoder.

The language model of SRC (a MobileVLM checkpoint, a Hugging Face Llama folder or hub id, or a
.gguf file) is exported exactly as mobilevlm-export builds decoders (same builder, same options,
same fp16 source for quantized precisions), once per configuration in CONFIGS, and each decoder
is run by the runtime's own DecoderEngine (embeddings in, in-place KV cache), token by token, over
fixed windows of a text corpus:

    text -> token ids -> windows of `window` tokens, each after BOS
    PyTorch fp32 reference: perplexity, and its greedy choice at every position
    each engine: perplexity, top-1 agreement with the reference's choices (teacher-forced: both
                 read the same true text, so one different choice does not cascade),
                 decoder bytes, bytes of weights read per decode token (what bounds decode speed
                 on a CPU: bandwidth / bytes), decode tokens/s (the same single-token steps the
                 runtime makes), and whether a window run at once (M > 1: prefill's kernels) gives
                 the logits of the same window run token by token (M = 1: decode's kernels)
Calibrated configurations (GPTQ) are calibrated on a text that shares nothing with the evaluation
text (calibration.overlap).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ...runtime import manifest as mf
from ...runtime.engines import DecoderEngine
from ...runtime.errors import CheckpointError
from ..export import (
    BUILDER_INT4,
    DEFAULT_QUANT,
    SENSITIVE_INT8,
    autoround_codes,
    autoround_key,
    autoround_resolve,
    build_decoder,
    embedding_table,
    gptq_llama_folder,
    int4_codes,
    is_calibrated,
    weights_dtype,
)
from ..llama_folder import write_llama_folder
from .rotation import rotate_llama


@dataclass(frozen=True)
class Config:
    """One way to build the decoder: a precision and the builder's quantization options."""

    name: str
    precision: str
    quant: Dict[str, object] = field(default_factory=dict)

    @property
    def is_default(self) -> bool:
        """Whether mobilevlm-export builds this precision this way."""
        return self.precision == "fp32" or DEFAULT_QUANT.get(self.precision) == self.quant


# Every configuration worth offering (onnxruntime-genai 0.18's builder options). The builder's
# older `int4_`-prefixed spellings (int4_algo_config, int4_is_symmetric, ...) are not read at all:
# only these names change the graph. `sensitive` = SENSITIVE_INT8 (model/export.py), llama.cpp's
# mixed strategy.
# GPTQ only (model/quant/gptq.py): lm_head and the sensitive layers' down projections in int8.
SENSITIVE_DOWN_INT8 = "last_matmul:int8,mixed_down:int8"
AUTOROUND_INT8 = {"lm_head": "int8/64", "sensitive": "int8/64"}  # the int4 default's int8 matrices
CONFIGS = (
    Config("fp32", "fp32"),
    Config("int8 block 128", "int8", {"block_size": 128}),
    Config("int8 block 64", "int8", {"block_size": 64}),  # Q8_0's bytes: 8 + 32/64 bits per weight
    Config("int8 block 32", "int8", {"block_size": 32}),
    Config("int8 block 32, accuracy level 1", "int8", {"block_size": 32, "accuracy_level": 1}),
    Config("int8 block 32 asymmetric", "int8", {"block_size": 32, "is_symmetric": False}),
    # QuaRot's rotation first (model/quant/rotation.py): the residual stream's outlier channels spread out
    # before onnxruntime's kernel rounds activations to int8 per block.
    Config("int8 block 64, rotated", "int8", {"block_size": 64, "rotate": "hadamard"}),
    Config("int8 block 32, rotated", "int8", {"block_size": 32, "rotate": "hadamard"}),
    Config("int8 block 32 asymmetric, rotated", "int8",
           {"block_size": 32, "is_symmetric": False, "rotate": "hadamard"}),
    Config("int8 block 64 asymmetric, rotated", "int8",
           {"block_size": 64, "is_symmetric": False, "rotate": "hadamard"}),
    # down's input (the MLP's product) is the one the rotation does not reach: finer activation blocks
    Config("int8 block 64, down block 32, rotated", "int8",
           {"block_size": 64, "layout": {"down": "int8/32"}, "rotate": "hadamard"}),
    Config("int4 block 128", "int4", {"block_size": 128}),
    Config("int4 block 32", "int4", {"block_size": 32}),
    Config("int4 block 32 asymmetric", "int4", {"block_size": 32, "is_symmetric": False}),
    Config("int4 block 32, accuracy level 1", "int4", {"block_size": 32, "accuracy_level": 1}),
    Config("int4 block 32, lm_head int8", "int4",
           {"block_size": 32, "matmul_mixed_precision": "last_matmul:int8"}),
    Config("int4 block 32 asymmetric, lm_head int8", "int4",
           {"block_size": 32, "is_symmetric": False, "matmul_mixed_precision": "last_matmul:int8"}),
    Config("int4 block 128, sensitive int8", "int4",
           {"block_size": 128, "matmul_mixed_precision": SENSITIVE_INT8}),
    Config("int4 block 32, sensitive int8", "int4",
           {"block_size": 32, "matmul_mixed_precision": SENSITIVE_INT8}),
    # The same weights with q, k and v as three MatMulNBits instead of one packed (builder's fuse_qkv).
    Config("int4 block 32, sensitive int8, q/k/v unfused", "int4", dict(BUILDER_INT4)),
    # Fewer bytes per token: an int4 block carries an fp32 scale, 32/block bits per weight.
    Config("int4 block 64, sensitive int8, q/k/v unfused", "int4",
           {"block_size": 64, "matmul_mixed_precision": SENSITIVE_INT8, "fuse_qkv": False}),
    Config("int4 block 128, sensitive int8, q/k/v unfused", "int4",
           {"block_size": 128, "matmul_mixed_precision": SENSITIVE_INT8, "fuse_qkv": False}),
    # Per-group bits and blocks (model/quant/layout.py): the builder's fp32 graph rounded by onnxruntime's
    # quantizer once per group, q/k/v unfused.
    Config("int4 block 32, lm_head and sensitive int8 block 64", "int4",
           {"block_size": 32, "layout": {"lm_head": "int8/64", "sensitive": "int8/64"}}),
    Config("int4 block 32, lm_head and sensitive int8 block 64, rotated", "int4",
           {"block_size": 32, "layout": {"lm_head": "int8/64", "sensitive": "int8/64"},
            "rotate": "hadamard"}),
    Config("int4 block 32, lm_head and sensitive down int8", "int4",
           {"block_size": 32, "layout": {"lm_head": "int8/32", "sensitive_down": "int8/32"}}),
    Config("int4 block 32, sensitive int8, lm_head int4", "int4",
           {"block_size": 32, "layout": {"sensitive": "int8/32"}}),
    Config("int4 block 32, gate/up block 64, sensitive int8", "int4",
           {"block_size": 32,
            "layout": {"lm_head": "int8/32", "sensitive": "int8/32", "gate_up": "int4/64"}}),
    Config("int4 block 32, sensitive int4 block 16, lm_head int8", "int4",
           {"block_size": 32, "layout": {"lm_head": "int8/32", "sensitive": "int4/16"}}),
    Config("int4 block 16, sensitive int8", "int4",
           {"block_size": 16, "matmul_mixed_precision": SENSITIVE_INT8}),
    Config("int4 k-quant block 32", "int4", {"block_size": 32, "algo_config": "k_quant"}),
    Config("int4 k-quant block 32, sensitive int8", "int4",
           {"block_size": 32, "algo_config": "k_quant_mixed"}),
    Config("int4 k-quant block 16, sensitive int8", "int4",
           {"block_size": 16, "algo_config": "k_quant_mixed"}),
    # HQQ: onnxruntime's quantizer on the builder's fp32 graph (float zero points, see export.py).
    Config("int4 HQQ block 32", "int4", {"block_size": 32, "algo_config": "hqq"}),
    # GPTQ (Olive, model/quant/gptq.py) on calibration data, lm_head included; symmetric unless named.
    Config("int4 GPTQ block 32", "int4", {"algo_config": "gptq", "block_size": 32}),
    Config("int4 GPTQ block 32, lm_head int8", "int4",
           {"algo_config": "gptq", "block_size": 32, "matmul_mixed_precision": "last_matmul:int8"}),
    Config("int4 GPTQ block 32, sensitive int8", "int4",
           {"algo_config": "gptq", "block_size": 32, "matmul_mixed_precision": SENSITIVE_INT8}),
    Config("int4 GPTQ block 32, lm_head and sensitive down int8", "int4",
           {"algo_config": "gptq", "block_size": 32, "matmul_mixed_precision": SENSITIVE_DOWN_INT8}),
    Config("int4 GPTQ block 64, lm_head int8", "int4",
           {"algo_config": "gptq", "block_size": 64, "matmul_mixed_precision": "last_matmul:int8"}),
    Config("int4 GPTQ block 64, lm_head and sensitive down int8", "int4",
           {"algo_config": "gptq", "block_size": 64, "matmul_mixed_precision": SENSITIVE_DOWN_INT8}),
    Config("int4 GPTQ block 64, sensitive int8", "int4",
           {"algo_config": "gptq", "block_size": 64, "matmul_mixed_precision": SENSITIVE_INT8}),
    Config("int4 GPTQ block 32 asymmetric, lm_head int8", "int4",
           {"algo_config": "gptq", "block_size": 32, "is_symmetric": False,
            "matmul_mixed_precision": "last_matmul:int8"}),
    Config("int8 GPTQ block 64", "int8", {"algo_config": "gptq", "block_size": 64}),
    # AutoClip (Olive: activation-aware clipping, AWQ's clip search), then the builder's rounding,
    # symmetric, q/k/v unfused as the int4 default.
    Config("int4 AutoClip block 32", "int4",
           {"algo_config": "autoclip", "block_size": 32, "fuse_qkv": False}),
    Config("int4 AutoClip block 32, lm_head int8", "int4",
           {"algo_config": "autoclip", "block_size": 32, "matmul_mixed_precision": "last_matmul:int8",
            "fuse_qkv": False}),
    Config("int4 AutoClip block 32, sensitive int8", "int4",
           {"algo_config": "autoclip", "block_size": 32, "matmul_mixed_precision": SENSITIVE_INT8,
            "fuse_qkv": False}),
    # AutoRound (model/quant/autoround.py): its learned codes and scales, on onnxruntime's own
    # symmetric grid, packed into MatMulNBits as they are; AutoRound's default 200 iterations.
    *(Config(f"int4 AutoRound block {b}, lm_head int8", "int4",
             {"algo_config": "autoround", "block_size": b, "layout": {"lm_head": "int8/64"}})
      for b in (32, 64, 128)),
    *(Config(f"int4 AutoRound block {b}, lm_head and sensitive int8 block 64", "int4",
             {"algo_config": "autoround", "block_size": b, "layout": AUTOROUND_INT8})
      for b in (32, 64, 128)),
    # int8 matrices chosen by measurement (model/quant/sensitivity.py) within the bytes the rule spends.
    *(Config(f"int4 AutoRound block {b}, int8 by measurement", "int4",
             {"algo_config": "autoround", "block_size": b, "int8": "measured"}) for b in (32, 64, 128)),
    # Its fast mode: the optimised rounding without iterations (auto-round's iters=0).
    Config("int4 AutoRound fast block 64, lm_head and sensitive int8 block 64", "int4",
           {"algo_config": "autoround", "block_size": 64, "iters": 0, "layout": AUTOROUND_INT8}),
)


@dataclass
class LanguageModel:
    """A trained Llama, fp32, with what the exporter and the scorer need around it."""

    llm: torch.nn.Module  # LlamaForCausalLM
    encode: Callable[[str], List[int]]  # text -> token ids, no BOS
    bos_id: Optional[int]
    write_tokenizer: Callable[[str], None]  # puts tokenizer files in a Llama folder for the builder
    name: str
    decode: Optional[Callable[[List[int]], str]] = None  # token ids -> text, special tokens dropped


def load_language_model(src: str) -> LanguageModel:
    """SRC: a .gguf file, a MobileVLM checkpoint (its language model), or a Llama folder / hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..loader import resolve

    if src.endswith(".gguf"):
        if not os.path.isfile(src):
            raise CheckpointError(f"{src}: no such file")
        folder, name = os.path.split(os.path.abspath(src))
        # transformers de-quantizes GGUF weights to fp32 (needs the gguf package).
        llm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    else:
        folder = resolve(src)
        with open(os.path.join(folder, "config.json")) as f:
            raw = json.load(f)
        if "mm_projector_type" in raw:  # a MobileVLM checkpoint: its Llama, its sentencepiece model
            from ...runtime.tokenizer import Tokenizer
            from ..export import sentencepiece_tokenizer_writer
            from ..loader import load_language_model as load_mobilevlm_llm

            sp = Tokenizer(os.path.join(folder, "tokenizer.model"))
            return LanguageModel(load_mobilevlm_llm(folder), lambda text: sp.encode(text, add_bos=False),
                                 sp.bos_id, sentencepiece_tokenizer_writer(sp.path), src, sp.decode)
        llm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder)
    if llm.config.model_type != "llama":
        raise CheckpointError(f"{src}: a {llm.config.model_type} model; "
                              "the decoder exporter takes Llama models")
    return LanguageModel(llm.eval().requires_grad_(False),
                         lambda text: tok(text, add_special_tokens=False).input_ids,
                         tok.bos_token_id, tok.save_pretrained, src,
                         lambda ids: tok.decode(ids, skip_special_tokens=True))


def corpus_windows(ids: List[int], tokens: int, window: int) -> List[List[int]]:
    """The first `tokens` ids in windows of `window` (the last one may be shorter)."""
    if len(ids) < tokens:
        raise ValueError(f"the corpus has {len(ids)} tokens, fewer than the {tokens} asked for")
    ids = ids[:tokens]
    return [ids[i:i + window] for i in range(0, tokens, window)]


def texts_windows(texts: List[List[int]], tokens: int, window: int) -> List[List[int]]:
    """`tokens` ids from several texts (token ids each), whole windows taken from each text in turn, so
    that no one text decides the result; the last window may be shorter."""
    have = sum(len(t) // window * window for t in texts)
    if have < tokens:
        raise ValueError(f"the corpus has {have} tokens in whole windows of {window}, "
                         f"fewer than the {tokens} asked for")
    pools = [corpus_windows(t, len(t) // window * window, window) for t in texts if len(t) >= window]
    out, left = [], tokens
    for i in range(max(map(len, pools))):
        for pool in pools:
            if i < len(pool) and left > 0:
                out.append(pool[i][:left])
                left -= len(out[-1])
    return out


def weights_read_per_token(graph: str) -> int:
    """Bytes of weights a decode step reads: every initializer but the rotary caches (one row read
    per step). The graph has no embedding table (the runtime gathers rows itself)."""
    import onnx

    model = onnx.load(graph, load_external_data=False)
    skip = {name for node in model.graph.node if node.op_type == "GroupQueryAttention"
            for name in node.input[7:9]}  # cos_cache, sin_cache
    total = 0
    for init in model.graph.initializer:
        if init.name in skip:
            continue
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in init.external_data}["length"])
        else:
            total += len(init.raw_data) or onnx.numpy_helper.to_array(init).nbytes
    return total


def window_at_once_vs_steps(decoder: DecoderEngine, table: np.ndarray, ids: List[int],
                            reference: Optional[np.ndarray] = None) -> dict:
    """onnxruntime issue 29853: the last logits of `ids` run at once (M > 1: prefill's kernels) against
    the same ids run one token per call (M = 1: decode's kernels). `relative` is their largest
    difference over the logits' range (float noise: ~1e-7). With `reference` (the fp32 model's logits),
    each path's own error too: a kernel bug shows as one path far from the reference, int8 activation
    rounding as both paths about equally far."""
    embeds = np.asarray(table[ids], np.float32)
    decoder.rewind(0)
    at_once = decoder.run(embeds).astype(np.float64)
    decoder.rewind(0)
    for row in embeds:
        steps = decoder.run(row[None])
    steps = steps.astype(np.float64)
    gap = float(np.abs(at_once - steps).max())
    out = {"max_abs": gap, "relative": gap / (np.ptp(steps) or 1.0),
           "same_argmax": bool(at_once.argmax() == steps.argmax())}
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        out["at_once_error"] = float(np.abs(at_once - ref).max() / np.ptp(ref))
        out["steps_error"] = float(np.abs(steps - ref).max() / np.ptp(ref))
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max()
    return z - math.log(np.exp(z).sum())


def _with_bos(lm: LanguageModel, window: List[int]) -> List[int]:
    """The ids a window is read as: BOS first when the model has one. Every id after the first is scored."""
    return ([lm.bos_id] if lm.bos_id is not None else []) + window


@torch.no_grad()
def score_reference(lm: LanguageModel, windows: List[List[int]]) -> dict:
    """PyTorch fp32: perplexity, and the greedy choice before each scored token."""
    nll, choices = 0.0, []
    for w in windows:
        ids = _with_bos(lm, w)
        logp = torch.log_softmax(lm.llm(torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
        nll -= logp.gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        choices.append(logp.argmax(-1).tolist())
    n = sum(len(c) for c in choices)
    return {"ppl": math.exp(nll / n), "tokens": n, "choices": choices}


def _engine_manifest(folder: str, llm, decoder_io: dict, context: int) -> mf.Manifest:
    """The part of a manifest DecoderEngine reads, for a decoder built outside an engine directory."""
    cfg = llm.config
    heads = cfg.num_attention_heads
    model = {"hidden_size": cfg.hidden_size, "num_layers": cfg.num_hidden_layers,
             "num_kv_heads": cfg.num_key_value_heads or heads,
             "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
             "vocab_size": cfg.vocab_size, "context_length": context}
    return mf.Manifest(folder, {"model": model, "files": {"decoder": {"path": "decoder.onnx"}},
                                "decoder_io": decoder_io})


def score_teacher_forced(lm: LanguageModel, start: Callable[[int], np.ndarray],
                         step: Callable[[int], np.ndarray], windows: List[List[int]],
                         reference_choices: List[List[int]]) -> dict:
    """Teacher-forced, one token per step: perplexity, agreement with the reference, decode speed.
    start(first_id) empties the engine's cache and returns the logits after that id; step(id) the
    logits after one more. Any engine (ours, llama.cpp) is scored by this one loop."""
    nll, agree, n, step_s, steps = 0.0, 0, 0, 0.0, 0
    for w, ref in zip(windows, reference_choices):
        ids = _with_bos(lm, w)
        logits = start(ids[0])
        for i, token in enumerate(ids[1:]):
            nll -= _log_softmax(logits)[token]
            agree += int(np.argmax(logits)) == ref[i]
            n += 1
            if i + 2 < len(ids):
                t0 = time.perf_counter()
                logits = step(token)
                step_s += time.perf_counter() - t0
                steps += 1
    return {"ppl": math.exp(nll / n), "agreement": agree / n,
            "decode_tok_s": steps / step_s if step_s else 0.0}


def score_engine(lm: LanguageModel, decoder: DecoderEngine, table: np.ndarray, windows: List[List[int]],
                 reference_choices: List[List[int]]) -> dict:
    """Our decoder: embeddings in, the in-place KV cache rewound per window."""
    def step(token: int) -> np.ndarray:
        return decoder.run(np.asarray(table[[token]], np.float32))

    def start(token: int) -> np.ndarray:
        decoder.rewind(0)
        return step(token)

    return score_teacher_forced(lm, start, step, windows, reference_choices)


def with_iters(config: Config, iters: int) -> Config:
    """An AutoRound configuration learning `iters` iterations, named so: "NAME (N iters)"."""
    return replace(config, name=f"{config.name} ({iters} iters)", quant={**config.quant, "iters": iters})


def config_named(name: str, precision: Optional[str] = None) -> Optional[Config]:
    """The configuration mobilevlm-quality prints as `name` (with " (N iters)" after an AutoRound
    row's name: that row at N iterations)."""
    m = re.fullmatch(r"(.*) \((\d+) iters\)", name)
    base = m.group(1) if m else name
    config = next((c for c in CONFIGS if c.name == base and precision in (None, c.precision)), None)
    if config is None or not m:
        return config
    return with_iters(config, int(m.group(2))) if config.quant.get("algo_config") == "autoround" else None


def build_configs(lm: LanguageModel, configs, tmp: str, context: int, threads: int, calibration=None,
                  log=print):
    """(config, row, decoder or None, folder, the Llama it was built from) per configuration, built
    as mobilevlm-export builds it (a rotated configuration from the rotated Llama); a refusal is a
    row with "error". calibration: a calibration.Calibration for GPTQ configurations
    (None: their layout, rounded to nearest instead)."""
    from tqdm.auto import tqdm

    models = {"": lm.llm}  # the Llama each rotation makes (model/quant/rotation.py), made once
    sources = {}  # the Llama folder the builder reads, one per weight dtype and rotation
    learned, scores = {}, {}  # AutoRound's codes by what they depend on; 4-bit sensitivities by block
    for config in tqdm(configs, desc="configurations", disable=log is None):
        calibrated = is_calibrated(config.quant)
        dtype = torch.float32 if calibrated else weights_dtype(config.precision)
        rotation = str(config.quant.get("rotate", ""))
        if rotation not in models:
            models[rotation] = rotate_llama(lm.llm, os.path.join(tmp, f"rotate-{rotation}"),
                                            lm.write_tokenizer, rotation)
        llm = models[rotation]
        if (dtype, rotation) not in sources:
            source = os.path.join(tmp, "-".join(["llama", str(dtype).split(".")[-1], rotation]))
            os.makedirs(source)
            write_llama_folder(llm, source, dtype, lm.write_tokenizer)
            sources[dtype, rotation] = source
        out = os.path.join(tmp, config.name.replace(" ", "_").replace(",", ""))
        row = {"name": config.name, "precision": config.precision, "config": config.quant,
               "default": config.is_default}
        t0 = time.time()
        try:
            source, codes, quant = sources[dtype, rotation], None, config.quant
            if quant.get("algo_config") == "autoround":  # the float folder; codes on a copy
                samples = calibration.samples if calibration else None
                quant = autoround_resolve(llm, quant, samples, log, scores.setdefault(rotation, {}))
                key = (rotation, *autoround_key(quant, samples))
                if key not in learned:  # one learning per block serves every int8 choice
                    learned[key] = autoround_codes(copy.deepcopy(llm), quant, samples)
                codes = int4_codes(learned[key], quant)
                row["calibration"] = calibration.record if calibration else None
                if isinstance(quant.get("int8"), list):
                    row["int8"] = quant["int8"]  # what the measurement chose
            elif calibrated:
                # calibration None: the same layout rounded to nearest (bytes and speed only)
                samples = calibration.samples if calibration else None
                source = gptq_llama_folder(source, out + "-gptq", lm.write_tokenizer,
                                           config.precision, config.quant, samples)
                row["calibration"] = calibration.record if calibration else None
            decoder_io = build_decoder(source, out, config.precision, "cpu", quant, codes)
            manifest = _engine_manifest(out, llm, decoder_io, context)
            decoder = DecoderEngine(manifest, ["CPUExecutionProvider"], threads, max_length=context)
        except Exception as e:  # a configuration the builder or onnxruntime refuses is a result too
            row["error"] = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
            (log or print)(f"{config.name}: failed ({row['error']})")
            yield config, row, None, out, llm
            continue
        row["build_s"] = time.time() - t0
        row["bytes"] = sum(os.path.getsize(os.path.join(out, f))
                           for f in ("decoder.onnx", "decoder.onnx.data"))
        row["read_bytes"] = weights_read_per_token(os.path.join(out, "decoder.onnx"))
        yield config, row, decoder, out, llm
        del decoder
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out + "-gptq", ignore_errors=True)


def score_configs(lm: LanguageModel, windows: List[List[int]], reference: dict, window: int, configs=CONFIGS,
                  threads: int = 0, log=print, calibration=None) -> list:
    """Every configuration built as mobilevlm-export builds it, and scored; a refusal is a row too."""
    rows = []
    check_ids = _with_bos(lm, windows[0])[:64]  # the kernel check's window, and fp32's logits after it
    with torch.no_grad():
        check_reference = lm.llm(torch.tensor([check_ids])).logits[0, -1].double().numpy()
    with tempfile.TemporaryDirectory(prefix="mobilevlm_quality_") as tmp:
        built = build_configs(lm, configs, tmp, window + 1, threads, calibration, log)
        for config, row, decoder, _, llm in built:
            rows.append(row)
            if decoder is None:
                continue
            table = embedding_table(llm, config.precision)  # a rotated model's embeddings are rotated too
            row.update(score_engine(lm, decoder, table, windows, reference["choices"]))
            row["at_once_vs_steps"] = window_at_once_vs_steps(decoder, table, check_ids, check_reference)
            (log or print)(
                f"{config.name}: ppl {row['ppl']:.3f} ({100 * (row['ppl'] / reference['ppl'] - 1):+.1f}%), "
                f"agreement {row['agreement']:.3f}, {row['read_bytes'] / 2**20:.0f} MB read per token, "
                f"{row['decode_tok_s']:.0f} tok/s, M>1 vs M=1 {row['at_once_vs_steps']['relative']:.1e} "
                f"(vs fp32: M>1 {row['at_once_vs_steps']['at_once_error']:.1e}, "
                f"M=1 {row['at_once_vs_steps']['steps_error']:.1e})")
    return rows


def measure_shape(lm: LanguageModel, configs, steps: int = 64, threads: int = 0, log=print,
                  rounds: int = 3) -> list:
    """Bytes read per decode token and decode tokens/s of each configuration on `lm` (the synthetic
    checkpoint of a real shape). Calibration changes neither, so calibrated configurations are built
    with their layout rounded to nearest (Olive's RTN pass, the same checkpoint format).

    Speed: every engine is built first, then each round decodes `steps` tokens with each engine in
    turn; `decode_tok_s` is the median of the rounds (`decode_rounds` all of them). One after another,
    the same engine moved by 10-15% between minutes on this shared host; interleaved, every
    configuration sees the same minutes."""
    rows, engines, tables = [], [], {}
    with tempfile.TemporaryDirectory(prefix="mobilevlm_shape_") as tmp:
        for config, row, decoder, _, llm in build_configs(lm, configs, tmp, steps + 1, threads, None, log):
            rows.append(row)
            if decoder is not None:  # its session holds the weights: the folder may go
                key = (config.precision, id(llm))
                if key not in tables:
                    tables[key] = embedding_table(llm, config.precision)
                engines.append((row, decoder, tables[key]))
    ids = np.random.default_rng(0).integers(3, lm.llm.config.vocab_size, steps + 1)
    for row, _, _ in engines:
        row["decode_rounds"] = []
    for _ in range(rounds):
        for row, decoder, table in engines:
            decoder.rewind(0)
            decoder.run(np.asarray(table[ids[:1]], np.float32))
            t0 = time.perf_counter()
            for i in ids[1:]:
                decoder.run(np.asarray(table[[i]], np.float32))
            row["decode_rounds"].append(steps / (time.perf_counter() - t0))
    for row, _, _ in engines:
        row["decode_tok_s"] = float(np.median(row["decode_rounds"]))
        (log or print)(f"{row['name']} at this shape: {row['read_bytes'] / 2**20:.0f} MB read per token, "
                       f"{row['decode_tok_s']:.1f} tok/s (rounds: "
                       f"{', '.join(f'{r:.1f}' for r in row['decode_rounds'])})")
    return rows


def measure(lm: LanguageModel, texts, tokens: int = 8192, window: int = 512, configs=CONFIGS,
            threads: int = 0, log=print, calibration=None) -> dict:
    """The whole table: the reference, then every configuration, on `texts` (a text or a list of them).
    The reference's greedy choices come back too (`reference_choices`), for other engines scored on
    the same windows."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    windows = texts_windows([lm.encode(t) for t in texts], tokens, window)
    t0 = time.time()
    reference = score_reference(lm, windows)
    (log or print)(f"reference (PyTorch fp32): ppl {reference['ppl']:.3f} on {reference['tokens']} tokens "
                   f"({time.time() - t0:.1f}s)")
    engines = score_configs(lm, windows, reference, window, configs, threads, log, calibration)
    return {"reference": {"ppl": reference["ppl"], "tokens": reference["tokens"]}, "engines": engines,
            "windows": windows, "reference_choices": reference["choices"]}
