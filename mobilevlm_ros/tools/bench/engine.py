"""Our engine and the PyTorch fp32 reference, each measured in a process of its own (so peak RSS
is its own): vision ms, prefill tokens/s, decode tokens/s, time to first token, caption latency,
peak RSS, and decode against the host's memory-bandwidth bound."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from .common import frame, peak_rss_mb, read_bandwidth_gbs


def summarise(runs: list) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return med


def worker_ours(engine: str, new_tokens: int, runs: int, threads: int, backend: str = "auto") -> dict:
    from ...runtime.generation import GenerationParams
    from ...runtime.vlm import VLM

    t0 = time.perf_counter()
    vlm = VLM(engine, backend=backend, threads=threads, max_length=1024)
    load_s = time.perf_counter() - t0
    params = GenerationParams(max_new_tokens=new_tokens, ignore_eos=True)

    def request(i: int):
        first_token_at = []
        t0 = time.perf_counter()
        answer = vlm.describe(frame(i), None, params,
                              on_text=lambda text, tokens: (first_token_at
                                                            or first_token_at.append(time.perf_counter())))
        return answer.timings, first_token_at[0] - t0

    out = []
    for i in range(runs + 1):  # the first run warms up onnxruntime and fills the prompt-head cache
        t, ttft = request(i)
        if i:
            out.append(dict(vision_ms=t.vision_s * 1e3, prefill_tok_s=t.prefill_tokens / t.prefill_s,
                            decode_tok_s=t.decode_tokens_per_s, ttft_s=ttft, e2e_s=t.total_s,
                            prompt_tokens=t.prompt_tokens, prefill_tokens=t.prefill_tokens,
                            new_tokens=t.new_tokens))
    res = summarise(out)
    res["peak_rss_mb"] = peak_rss_mb()  # before the bandwidth probe below allocates its buffer
    res.update(load_s=load_s, backend=vlm.backend, precision=vlm.manifest.precision)
    if vlm.backend != "cpu":
        return res  # the host's read bandwidth does not bound a GPU's decode

    # Decode against the bandwidth bound, each run right after a bandwidth reading: the host's
    # bandwidth drifts by tens of percent within a minute.
    m = vlm.manifest
    weights = m.files["decoder"]["bytes"] + m.files["decoder_data"]["bytes"]
    per_token = weights + vlm.decoder.kv_bytes_per_position * (res["prompt_tokens"] + new_tokens / 2)
    fractions, bandwidths = [], []
    for i in range(runs):
        bw = read_bandwidth_gbs(threads, mb=int(per_token / (1 << 20)) + 1)
        t, _ = request(100 + i)
        bandwidths.append(bw)
        fractions.append(t.decode_tokens_per_s * per_token / (bw * 1e9))
    res.update(block_size=(m.data.get("quantization") or {}).get("block_size"),
               decode_bytes_per_token=per_token, read_bandwidth_gbs=statistics.median(bandwidths),
               decode_fraction_of_bound=statistics.median(fractions),
               decode_bound_tok_s=statistics.median(bandwidths) * 1e9 / per_token)
    return res


def worker_reference(checkpoint: str, new_tokens: int, runs: int, threads: int,
                     backend: str = "auto") -> dict:
    import torch

    from ...model.loader import load_checkpoint
    from ...runtime.image import preprocess
    from ...runtime.prompt import DEFAULT_CAPTION_QUESTION, build_prompt, tokenize_prompt
    from ...runtime.tokenizer import Tokenizer

    torch.set_num_threads(threads)
    device = "cuda" if backend in ("cuda", "tensorrt") else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--backend {backend}: this PyTorch ({torch.__version__}) has no CUDA, so there "
                         "is no PyTorch CUDA baseline; install a CUDA build of torch or pass --no-reference")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # CUDA calls return early
    t0 = time.perf_counter()
    model = load_checkpoint(checkpoint).to(device)
    load_s = time.perf_counter() - t0
    tok = Tokenizer(os.path.join(checkpoint, "tokenizer.model"))
    ids = tokenize_prompt(tok, build_prompt(DEFAULT_CAPTION_QUESTION))
    size = model.config.vision["image_size"]
    out = []
    with torch.no_grad():
        for i in range(runs + 1):
            t0 = time.perf_counter()
            pixels = torch.from_numpy(preprocess(frame(i), size)).to(device)
            image = model.vision(pixels)
            sync()
            vision_s = time.perf_counter() - t0
            embeds = model.embed(ids, image)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
            t1 = time.perf_counter()
            model.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=1, do_sample=False)
            sync()
            prefill_s = time.perf_counter() - t1
            ttft = time.perf_counter() - t0
            t1 = time.perf_counter()
            model.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False)
            sync()
            gen_s = time.perf_counter() - t1
            e2e = vision_s + gen_s
            if i:
                out.append(dict(vision_ms=vision_s * 1e3, prefill_tok_s=embeds.shape[1] / prefill_s,
                                decode_tok_s=(new_tokens - 1) / max(gen_s - prefill_s, 1e-9), ttft_s=ttft,
                                e2e_s=e2e, prompt_tokens=embeds.shape[1], new_tokens=new_tokens))
    res = summarise(out)
    res.update(load_s=load_s, peak_rss_mb=peak_rss_mb(), backend=f"torch-{device}", precision="fp32")
    return res


def run_worker(kind: str, target: str, a) -> dict:
    cmd = [sys.executable, "-m", "mobilevlm_ros.tools.bench", "--worker", kind, target,
           "--new-tokens", str(a.new_tokens), "--runs", str(a.runs), "--threads", str(a.threads),
           "--backend", a.backend]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"mobilevlm-bench: {kind} worker failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def table(rows: dict) -> str:
    cols = [("vision_ms", "vision ms", "{:.0f}"), ("prefill_tok_s", "prefill tok/s", "{:.0f}"),
            ("decode_tok_s", "decode tok/s", "{:.1f}"), ("ttft_s", "TTFT s", "{:.2f}"),
            ("e2e_s", "caption s", "{:.2f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}")]
    head = f"{'':28}" + "".join(f"{c[1]:>15}" for c in cols)
    lines = [head]
    for name, r in rows.items():
        lines.append(f"{name:28}" + "".join(f"{(c[2].format(r[c[0]]) if c[0] in r else '-'):>15}"
                                            for c in cols))
    return "\n".join(lines)


