"""`mobilevlm-bench --llamacpp`: llama.cpp (its f16 mmproj, and the LLM at the bits of our engine: Q4_0
and Q4_K_M against an int4 engine, Q8_0 against int8) raced against our engine on the same checkpoint,
frames, prompt token ids, thread count and greedy 32 tokens, in the same run.

Timings follow worker_ours: vision = the image encoder only (llama.cpp: mtmd_encode_chunk; its
preprocessing happens in mtmd_tokenize, as ours happens before the vision engine); prefill = positions
computed after the cached system-prompt head (image + question) over their time; decode = steps after
the first token over their time; TTFT = request start to the first token; caption = the whole request.
The workers run as separate processes in alternating rounds (ours, Q4_0, Q4_K_M, ours, ...), so a
drift of the shared host's speed hits every contender alike; a row is the median of its rounds.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .common import frame, peak_rss_mb

LLAMACPP_SRC_HELP = ("llama.cpp source folder with convert_hf_to_gguf.py, gguf-py and "
                     "tools/mtmd/legacy-models (e.g. llama-cpp-python's sdist vendor/llama.cpp)")
# llama.cpp's LLM quantizations raced against an engine of each precision (int4 for fp32/fp16 too).
RACES = {"int4": ("Q4_0", "Q4_K_M"), "int8": ("Q8_0",)}
# Ours divided by llama.cpp (rates) or llama.cpp by ours (times, memory): > 1 means ours is ahead.
RATIOS = (("vision", "vision_ms", False), ("prefill", "prefill_tok_s", True),
          ("decode", "decode_tok_s", True), ("caption", "e2e_s", False), ("peak RSS", "peak_rss_mb", False))


def add_arguments(p) -> None:
    g = p.add_argument_group("--llamacpp: race llama.cpp on the same checkpoint")
    g.add_argument("--llamacpp", action="store_true",
                   help="also run llama.cpp (Q4_0 and Q4_K_M against int4, Q8_0 against int8; needs "
                        "llama-cpp-python and --llamacpp-src)")
    g.add_argument("--llamacpp-src", help=LLAMACPP_SRC_HELP)
    g.add_argument("--rounds", type=int, default=2,
                   help="--llamacpp: rounds of alternating worker processes (ours, then llama.cpp's)")


def check_arguments(p, a, checkpoint: Optional[str]) -> None:
    """argparse errors for a --llamacpp run that cannot work, before anything slow starts."""
    if not a.llamacpp:
        return
    if not a.llamacpp_src:
        p.error("--llamacpp needs --llamacpp-src DIR: " + LLAMACPP_SRC_HELP)
    if not checkpoint:
        p.error("--llamacpp needs the checkpoint to convert: --synthetic NAME or --reference CHECKPOINT")
    if getattr(a, "backend", "auto") not in ("auto", "cpu"):
        p.error("--llamacpp races on the CPU (llama-cpp-python built for it): use --backend cpu or auto")
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    from ...model.llamacpp_vlm import check_llamacpp_src
    from ...runtime.errors import CheckpointError

    try:
        check_llamacpp_src(a.llamacpp_src)
    except CheckpointError as e:
        p.error(str(e))


# -- llama.cpp through its low-level API (one process per worker) ------------------------------
class LlamaCppVLM:
    """A GGUF LLM + mmproj in llama.cpp: image encode, decode of ids or embeddings, greedy logits."""

    def __init__(self, gguf: str, mmproj: str, threads: int, n_ctx: int = 1024):
        import llama_cpp as L
        from llama_cpp import mtmd_cpp as M

        self.L, self.M = L, M
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(gguf.encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_embd = L.llama_model_n_embd(self.model)
        self.eos = L.llama_vocab_eos(self.vocab)
        mp = M.mtmd_context_params_default()
        mp.use_gpu = False
        mp.n_threads = threads
        mp.print_timings = False
        self.mtmd = M.mtmd_init_from_file(mmproj.encode(), self.model, mp)
        if not self.mtmd:
            raise RuntimeError(f"llama.cpp could not load the mmproj {mmproj}")

    def image_chunks(self, rgb: np.ndarray):
        """mtmd_tokenize of the media marker with `rgb` (its preprocessing happens here): the chunk list
        and its image chunk."""
        M = self.M
        data = np.ascontiguousarray(rgb, dtype=np.uint8)
        bitmap = M.mtmd_bitmap_init(data.shape[1], data.shape[0],
                                    data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = M.mtmd_input_chunks_init()
        marker = M.mtmd_default_marker()
        text = M.mtmd_input_text(marker, len(marker), False, True)
        bitmaps = (M.mtmd_bitmap_p_ctypes * 1)(bitmap)
        try:
            if M.mtmd_tokenize(self.mtmd, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise RuntimeError("mtmd_tokenize failed")
        finally:
            M.mtmd_bitmap_free(bitmap)
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                return chunks, chunk
        M.mtmd_input_chunks_free(chunks)
        raise RuntimeError("mtmd_tokenize gave no image chunk")

    def encode(self, chunk) -> np.ndarray:
        """mtmd_encode_chunk: the image embeddings (n_tokens, n_embd) as the LLM takes them."""
        M = self.M
        if M.mtmd_encode_chunk(self.mtmd, chunk) != 0:
            raise RuntimeError("mtmd_encode_chunk failed")
        n = M.mtmd_input_chunk_get_n_tokens(chunk)
        out = np.ctypeslib.as_array(M.mtmd_get_output_embd(self.mtmd), shape=(n * self.n_embd,))
        return out.reshape(n, self.n_embd).copy()

    def image_embeddings(self, rgb: np.ndarray) -> np.ndarray:
        chunks, chunk = self.image_chunks(rgb)
        try:
            return self.encode(chunk)
        finally:
            self.M.mtmd_input_chunks_free(chunks)

    def forget_from(self, pos: int) -> None:
        """Drop the KV cache from `pos` on (the head before it stays)."""
        self.L.llama_memory_seq_rm(self.L.llama_get_memory(self.ctx), 0, pos, -1)

    def decode(self, pos: int, tokens: Optional[List[int]] = None, embeds: Optional[np.ndarray] = None,
               logits: bool = True) -> Optional[np.ndarray]:
        """One llama_decode of token ids or embeddings at positions pos..; the last position's logits."""
        L = self.L
        n = len(tokens) if tokens is not None else embeds.shape[0]
        batch = L.llama_batch_init(n, 0 if tokens is not None else self.n_embd, 1)
        try:
            if tokens is not None:
                for i, t in enumerate(tokens):
                    batch.token[i] = t
            else:
                src = np.ascontiguousarray(embeds, dtype=np.float32)
                ctypes.memmove(batch.embd, src.ctypes.data, src.nbytes)
            for i in range(n):
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 0
            batch.logits[n - 1] = int(logits)
            batch.n_tokens = n
            if L.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            L.llama_batch_free(batch)
        if not logits:
            return None
        return np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).copy()

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]


def _prompt_ids(tokenizer_path: str):
    from ...runtime.prompt import DEFAULT_CAPTION_QUESTION, IMAGE_TOKEN_INDEX, build_prompt, tokenize_prompt
    from ...runtime.tokenizer import Tokenizer

    ids = tokenize_prompt(Tokenizer(tokenizer_path), build_prompt(DEFAULT_CAPTION_QUESTION))
    cut = ids.index(IMAGE_TOKEN_INDEX)
    return ids[:cut], ids[cut + 1:]


def worker_llamacpp(gguf: str, new_tokens: int, runs: int, threads: int) -> dict:
    """worker_ours's figures for llama.cpp; the mmproj and tokenizer.model lie beside `gguf`."""
    from ...model.llamacpp_vlm import MMPROJ

    folder = os.path.dirname(os.path.abspath(gguf))
    head, tail = _prompt_ids(os.path.join(folder, "tokenizer.model"))
    t0 = time.perf_counter()
    vlm = LlamaCppVLM(gguf, os.path.join(folder, MMPROJ), threads)
    load_s = time.perf_counter() - t0
    state = {"head_cached": False}

    def request(i: int) -> dict:
        t_start = time.perf_counter()
        chunks, chunk = vlm.image_chunks(frame(i))
        t0 = time.perf_counter()
        image = vlm.encode(chunk)
        vision_s = time.perf_counter() - t0
        vlm.M.mtmd_input_chunks_free(chunks)
        t0 = time.perf_counter()
        computed = 0
        if not state["head_cached"]:  # as ours: the system-prompt head is computed once, then kept
            vlm.forget_from(0)
            vlm.decode(0, tokens=head, logits=False)
            state["head_cached"] = True
            computed += len(head)
        vlm.forget_from(len(head))
        vlm.decode(len(head), embeds=image, logits=False)
        logits = vlm.decode(len(head) + len(image), tokens=tail)
        prefill_s = time.perf_counter() - t0
        computed += len(image) + len(tail)
        pos = len(head) + len(image) + len(tail)
        tokens, text, decode_s, ttft = [], b"", 0.0, 0.0
        while True:
            logits[vlm.eos] = -np.inf  # EOS ignored, as ours with ignore_eos
            token = int(np.argmax(logits))
            tokens.append(token)
            text += vlm.piece(token)
            if len(tokens) == 1:
                ttft = time.perf_counter() - t_start
            if len(tokens) == new_tokens:
                break
            t0 = time.perf_counter()
            logits = vlm.decode(pos, tokens=[token])
            decode_s += time.perf_counter() - t0
            pos += 1
        e2e = time.perf_counter() - t_start
        return dict(vision_ms=vision_s * 1e3, prefill_tok_s=computed / prefill_s,
                    decode_tok_s=(len(tokens) - 1) / decode_s if decode_s > 0 else 0.0, ttft_s=ttft,
                    e2e_s=e2e, prompt_tokens=pos - len(tokens) + 1, prefill_tokens=computed,
                    new_tokens=len(tokens))

    out = [request(i) for i in range(runs + 1)][1:]  # the first warms up and fills the head
    res = {k: statistics.median(r[k] for r in out) for k in out[0]}
    res.update(peak_rss_mb=peak_rss_mb(), load_s=load_s, backend="llama.cpp-cpu",
               precision=os.path.basename(gguf)[len("model-"):-len(".gguf")])
    return res


# -- the vision check -----------------------------------------------------------------------------
def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    """Cosine similarity of two (tokens, hidden) embeddings: flattened, and the mean over tokens."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])
    b = np.asarray(b, dtype=np.float64).reshape(-1, b.shape[-1])
    if a.shape != b.shape:
        return {"flat": float("nan"), "per_token": float("nan"), "shapes": [list(a.shape), list(b.shape)]}
    flat = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
    per = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"flat": flat, "per_token": float(per.mean())}


def engine_rotation(engine: str, model) -> np.ndarray:
    """The rotation a rotated engine (model/quant/rotation.py) applies to the residual stream, recovered
    from its embedding table (fp16) against the checkpoint's (`model`: reference.MobileVLM)."""
    import torch

    from ...model.quant.rotation import recover_rotation

    table = torch.from_numpy(np.load(os.path.join(engine, "embed_tokens.npy")).astype(np.float32))
    return recover_rotation(model.llm.get_input_embeddings().weight.detach(), table, tolerance=2e-3).numpy()


def worker_vision_check(gguf: str, engine: str, checkpoint: Optional[str], threads: int) -> dict:
    """Image embeddings of frame 0 from llama.cpp, our engine and (with a checkpoint) PyTorch, compared.
    A rotated engine's embeddings are compared after its rotation is undone (they enter a rotated
    language model); without the checkpoint they are left as they are."""
    from ...model.llamacpp_vlm import MMPROJ
    from ...runtime.image import preprocess, square_image
    from ...runtime.vlm import VLM

    rgb = frame(0)
    ours_vlm = VLM(engine, threads=threads, max_length=1024)
    size = ours_vlm.image_size
    same = square_image(rgb, size)  # given to llama.cpp, its resize is a copy: the same pixels
    pixels = preprocess(same, size)
    if not np.array_equal(pixels, preprocess(rgb, size)):
        raise RuntimeError("the SxS frame does not give our preprocessing's pixels")
    vlm = LlamaCppVLM(gguf, os.path.join(os.path.dirname(os.path.abspath(gguf)), MMPROJ), threads)
    emb = {"llamacpp": vlm.image_embeddings(same), "llamacpp_own_preprocessing": vlm.image_embeddings(rgb),
           "ours": np.asarray(ours_vlm.vision(pixels)).reshape(-1, vlm.n_embd)}
    if checkpoint:
        import torch

        from ...model.loader import load_checkpoint

        torch.set_num_threads(threads)
        model = load_checkpoint(checkpoint)
        with torch.no_grad():
            emb["reference"] = model.vision(torch.from_numpy(pixels))[0].numpy()
        if (ours_vlm.manifest.data.get("quantization") or {}).get("rotate"):
            emb["ours"] = emb["ours"] @ engine_rotation(engine, model).T  # back to the checkpoint's space
    pairs = [("llamacpp", "ours"), ("llamacpp_own_preprocessing", "llamacpp")]
    if "reference" in emb:
        pairs = [("llamacpp", "reference"), ("ours", "reference"),
                 ("llamacpp_own_preprocessing", "reference")] + pairs
    return {"image_tokens": {k: int(v.shape[0]) for k, v in emb.items()},
            "pairs": [{"a": x, "b": y, **cosines(emb[x], emb[y])} for x, y in pairs]}


# -- the race -------------------------------------------------------------------------------------
def conversion_folder(a, checkpoint: str) -> str:
    name = a.synthetic or os.path.basename(os.path.normpath(checkpoint))
    return os.path.join(a.work, f"{name}-llamacpp")


def _run_module_worker(args: List[str]) -> dict:
    cmd = [sys.executable, "-m", "mobilevlm_ros.tools.bench.llamacpp", *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"mobilevlm-bench: llama.cpp worker {args[0]} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def merge_rounds(rounds: List[dict]) -> dict:
    """One row from a contender's rounds: the median of each figure, the rest from the first round."""
    out = dict(rounds[0])
    for k, v in rounds[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in rounds)
    return out


def ratios(ours: dict, other: dict) -> Dict[str, float]:
    """Ours against `other`, each > 1 where ours is ahead (faster, or less memory)."""
    out = {}
    for name, key, higher_is_better in RATIOS:
        if key in ours and key in other and ours[key] and other[key]:
            out[name] = ours[key] / other[key] if higher_is_better else other[key] / ours[key]
    return out


def format_ratios(name: str, r: Dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.2f}x" for k, v in r.items())
    return f"ours vs {name}: {parts}  (>1: ours faster / smaller)"


def format_vision_check(check: dict) -> List[str]:
    names = {"llamacpp": "llama.cpp (our pixels)", "ours": "ours", "reference": "PyTorch fp32",
             "llamacpp_own_preprocessing": "llama.cpp (own preprocessing)"}
    tokens = check["image_tokens"]
    lines = ["vision check, frame 0 (image embeddings, " +
             ", ".join(f"{names[k]} {v}" for k, v in tokens.items()) + " tokens):"]
    for p in check["pairs"]:
        lines.append(f"  {names[p['a']]:>30} vs {names[p['b']]:<24} cosine {p['flat']:.4f} flattened, "
                     f"{p['per_token']:.4f} mean per token")
    ref = {(p["a"], p["b"]): p for p in check["pairs"]}
    lc, ours = ref.get(("llamacpp", "reference")), ref.get(("ours", "reference"))
    if lc and ours:
        same = lc["flat"] >= 0.99
        lines.append(f"  same pixels in: llama.cpp {'computes' if same else 'does NOT compute'} what PyTorch "
                     f"does (cosine {lc['flat']:.3f}; ours {ours['flat']:.3f})")
    return lines


def contenders(engine: str) -> Tuple[str, ...]:
    """llama.cpp's quantizations to race an engine against: the same bits (its manifest's precision)."""
    from ...runtime import manifest

    return RACES.get(manifest.load(engine, verify=False).precision, RACES["int4"])


def race_llamacpp(a, engine: str, checkpoint: str, run_worker: Callable[[str, str, object], dict],
                  log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict:
    """Convert once, then alternate ours and llama.cpp's processes (`contenders`) for a.rounds
    rounds, then the vision check. Returns ours (merged), the llama.cpp rows, their ratios and the
    printed lines."""
    from ...model.llamacpp_vlm import prepare

    quants = contenders(engine)
    paths = prepare(checkpoint, a.llamacpp_src, conversion_folder(a, checkpoint), a.threads, log)
    per_round: Dict[str, List[dict]] = {"ours": [], **{q: [] for q in quants}}
    common = ["--new-tokens", str(a.new_tokens), "--runs", str(a.runs), "--threads", str(a.threads)]
    for r in range(a.rounds):
        log(f"round {r + 1}/{a.rounds}: ours ...")
        per_round["ours"].append(run_worker("ours", engine, a))
        for q in quants:
            log(f"round {r + 1}/{a.rounds}: llama.cpp {q} ...")
            per_round[q].append(_run_module_worker(["speed", paths[q], *common]))
    ours = merge_rounds(per_round["ours"])
    rows = {f"llama.cpp {q}": merge_rounds(per_round[q]) for q in quants}
    log("vision check ...")
    vision = _run_module_worker(["vision", paths[quants[0]], engine, checkpoint or "",
                                 "--threads", str(a.threads)])
    table_ratios = {name: ratios(ours, row) for name, row in rows.items()}
    lines = [f"llama.cpp: {a.rounds} rounds of alternating processes (ours, "
             + ", ".join(quants) + f"), each {a.runs} runs after a warm-up; "
             "a row is the median of its rounds; llama.cpp's image encoder is its f16 mmproj"]
    lines += [format_ratios(name, r) for name, r in table_ratios.items()]
    lines += format_vision_check(vision)
    return {"ours": ours, "rows": rows, "lines": lines,
            "json": {"rounds": per_round, "rows": rows, "ratios": table_ratios, "vision_check": vision,
                     "gguf": paths}}


def main(argv=None) -> int:
    import argparse

    from ...runtime.sessions import default_threads

    p = argparse.ArgumentParser(description="llama.cpp workers of mobilevlm-bench (one process each)")
    p.add_argument("kind", choices=["speed", "vision"])
    p.add_argument("gguf")
    p.add_argument("engine", nargs="?")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    threads = a.threads or default_threads()
    if a.kind == "speed":
        res = worker_llamacpp(a.gguf, a.new_tokens, a.runs, threads)
    else:
        res = worker_vision_check(a.gguf, a.engine, a.checkpoint or None, threads)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
