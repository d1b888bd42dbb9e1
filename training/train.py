"""Train the demo model: a small MobileVLM (CLIP tower -> LDPv2 -> LLaMA) that sees the generated world.

    python -m training.train --out DIR [--minutes M | --vision-steps N --steps M] [--smoke]

Two phases, both seeded and step-based (same steps -> same weights on the same machine):
  A. vision (vision_phase.py): the tower and the projector learn from dense targets the generator
     gives for free (per-patch colour+shape class; per image token: class fractions, object
     centre, and the box of the object it covers), through small heads that are thrown away afterwards.
  B. VLM (llm_phase.py): the whole model on question/answer sequences in the v1 prompt format, loss
     on answer tokens (+ EOS) only; the dense loss stays on at a lower weight so the tower keeps what
     it learned. A pointer loss teaches one attention head to look at the object a phrase names
     (pointer_loss): without it the model read single objects but could not pick one of several.
     Curriculum: 1 object per scene for the first 10 %, then up to 2, 3 and (from 40 %) 4.
Between the two, the projector's output is rescaled to the text-embedding scale.
The folder written is a checkpoint in the released layout (config.json with mm_* keys,
model.safetensors with the released tensor names, clip/ config, tokenizer.model), loadable with
mobilevlm_ros.model.loader.load_checkpoint and exportable with mobilevlm_ros.model.export.

Scene seeds: training < 9_000_000, in-training validation 9_000_000+, evaluation 10_000_000+.
`--minutes` times a few steps of each phase and fixes the step counts from that (logged, and
written to train_info.json): pass `--vision-steps/--steps` to reproduce a run exactly.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import time
from functools import partial
from typing import Optional

import numpy as np
import torch

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.model.config import MobileVLMConfig
from mobilevlm_ros.model.loader import load_checkpoint
from mobilevlm_ros.model.reference import MobileVLM
from mobilevlm_ros.model.tokenizer_train import train_tokenizer
from training.checkpoint import RunCheckpoints
from training.data import VAL_SEED, TextCodec, demo_corpus, scene_batches, scene_sample, word_ids
from training.llm_phase import llm_phase
from training.model import (
    LLM,
    SELECT_LAYER,
    SMOKE_LLM,
    SMOKE_VISION,
    VISION,
    DenseHeads,
    build_config,
    rescale_projector,
)
from training.quick_eval import quick_eval
from training.vision_phase import vision_phase


class Log:
    """Timestamped progress lines on stdout and appended to a file."""

    def __init__(self, path: Optional[str]):
        self.f = open(path, "a") if path else None
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()


def _scene_pool(workers: int):
    """Processes generating scenes ahead of the training step (None: in this process)."""
    return mp.get_context("fork").Pool(workers) if workers > 0 else None


def train(out: str, minutes: float = 40.0, vision_steps: int = 0, steps: int = 0, smoke: bool = False,
          seed: int = 0, vision_batch: int = 32, batch: int = 8, eval_every_s: float = 480.0,
          save_every_s: float = 300.0, workers: int = 1, log_path: Optional[str] = None,
          init: Optional[str] = None, lr_scale: float = 1.0, pointer_weight: float = 1.0) -> str:
    """Train; returns the final checkpoint folder (OUT/last).

    init: continue from a checkpoint this trainer wrote (phase A and the curriculum are skipped,
    the dense heads, which checkpoints do not hold, are left out; scene seeds start at 2_000_000
    so the continuation sees new scenes). lr_scale multiplies every peak learning rate.
    pointer_weight: of pointer_loss, next to the answer loss (weight 1).
    """
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    os.makedirs(out, exist_ok=True)
    log = Log(log_path or os.path.join(out, "train.log"))
    vision, llm = (SMOKE_VISION, SMOKE_LLM) if smoke else (VISION, LLM)
    size, patch = vision["image_size"], vision["patch_size"]
    if smoke:
        vision_steps, steps, vision_batch, batch, workers = vision_steps or 3, steps or 3, 4, 2, 0

    # Tokenizer on the demo's own text.
    tok_path = os.path.join(out, "tokenizer.model")
    if init:
        shutil.copy(os.path.join(init, "tokenizer.model"), tok_path)
    else:
        corpus = demo_corpus(300 if smoke else 3000)
        train_tokenizer(tok_path, corpus, vocab_size=llm["vocab_size"], seed=seed)
    codec = TextCodec(tok_path)
    log(f"tokenizer: head {len(codec.head)} tokens; sample answer "
        f"{codec.tok._sp.encode('[0.48, 0.12, 0.76, 0.40]', out_type=str)}")

    raw = build_config(vision, llm)
    model = MobileVLM(MobileVLMConfig.from_dict(raw, vision), attn_implementation="sdpa")
    with torch.no_grad():  # text embeddings at the scale the projector output is brought to
        model.llm.get_input_embeddings().weight.normal_(0.0, 0.05)
    if init:
        model.load_state_dict(load_checkpoint(init).state_dict())
    heads = DenseHeads(vision["hidden_size"], llm["hidden_size"])
    words = (word_ids(codec, S.COLOURS), word_ids(codec, S.SHAPES))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters; {model.config.num_image_tokens} image tokens")

    pool = _scene_pool(workers)
    info = dict(seed=seed, smoke=smoke, vision=vision, llm=llm, select_layer=SELECT_LAYER, init=init,
                lr_scale=lr_scale, pointer_weight=pointer_weight)
    t_start = time.time()

    # Phase A: vision from dense targets (skipped when continuing: the tower was trained).
    t_phase = time.time()
    if init:
        vision_steps = -1
    else:
        vision_steps = vision_phase(model, heads, words, partial(scene_batches, pool, size, patch),
                                    steps=vision_steps, batch=vision_batch, budget_s=minutes * 60 * 0.15,
                                    lr_scale=lr_scale, log=log)
    if pool:  # drop the batches phase A had queued
        pool.terminate()
        pool = _scene_pool(workers)
    info.update(vision_steps=vision_steps, vision_batch=vision_batch,
                vision_minutes=round((time.time() - t_phase) / 60, 2))

    if not init:
        probe = [scene_sample(VAL_SEED + 500 + i, size, patch, with_text=False)["pixels"] for i in range(8)]
        before = rescale_projector(model, 0.05, torch.from_numpy(np.stack(probe)))
        log(f"projector output std {before:.3f} -> 0.05 (text embedding std 0.05)")

    # Phase B: the VLM.
    evaluate = None if smoke else partial(quick_eval, model, codec, size, patch)
    checkpoints = RunCheckpoints(out, model, raw, vision, tok_path, info, batch=batch, t_start=t_start,
                                 evaluate=evaluate, eval_every_s=eval_every_s, save_every_s=save_every_s,
                                 log=log)
    budget_b = minutes * 60 - (time.time() - t_start) - 60
    steps = llm_phase(model, heads, codec, words, partial(scene_batches, pool, size, patch), checkpoints,
                      steps=steps, batch=batch, budget_s=budget_b, seed=seed, lr_scale=lr_scale,
                      pointer_weight=pointer_weight, continuing=bool(init), log=log)
    if pool:
        pool.terminate()
    checkpoints.save_last(steps)
    log(f"done: {info}")
    return os.path.join(out, "last")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (checkpoints in OUT/last and OUT/best)")
    p.add_argument("--minutes", type=float, default=40.0, help="wall-time budget used to fix the step counts")
    p.add_argument("--vision-steps", type=int, default=0, help="phase A steps (default: from --minutes)")
    p.add_argument("--steps", type=int, default=0, help="phase B steps (default: from --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="scene-generating processes")
    p.add_argument("--smoke", action="store_true", help="a tiny model for a few steps (tests)")
    p.add_argument("--init", help="continue from this checkpoint folder (skips phase A and the curriculum)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiplies every peak learning rate")
    p.add_argument("--pointer-weight", type=float, default=1.0,
                   help="weight of the phrase-conditioned pointer loss")
    a = p.parse_args(argv)
    train(a.out, a.minutes, a.vision_steps, a.steps, a.smoke, a.seed, workers=a.workers, init=a.init,
          lr_scale=a.lr_scale, pointer_weight=a.pointer_weight)


if __name__ == "__main__":
    main()
