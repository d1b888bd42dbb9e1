"""Phase A: the tower and the projector learn to see, from the dense targets the generator gives.

Small heads (training.model.DenseHeads) read per-patch classes and, per image token, class
fractions, the object centre and the box of the object it covers; word_alignment_loss points the
tokens of an object at the embeddings of its colour and shape words. No text is read or written.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.model.reference import MobileVLM
from training.data import collate_dense
from training.losses import word_alignment_loss
from training.model import DenseHeads, vision_features
from training.schedule import UNTIMED, set_lr


def vision_phase(model: MobileVLM, heads: DenseHeads, words: tuple, scenes: Callable, *, steps: int,
                 batch: int, budget_s: float, lr_scale: float, log: Callable[[str], None]) -> int:
    """Train the tower, the projector and `heads` for `steps` steps of `batch` scenes; returns the step count.

    words: the (colour, shape) word ids; scenes: training.data.scene_batches without its first
    three arguments (pool, size, patch). steps 0: time 10 steps, then fix the count from budget_s.
    """
    params = list(model.vision.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW([dict(params=params, peak=2e-3 * lr_scale)], weight_decay=0.01, betas=(0.9, 0.98))
    if not steps:
        steps = UNTIMED
    table = model.llm.get_input_embeddings()
    it = scenes(0, batch, lambda i: S.MAX_OBJECTS, False)
    t_phase, step = time.time(), 0
    while step < steps:
        b = collate_dense(next(it))
        set_lr(opt, step, steps if steps < UNTIMED else 1000, 50)
        feats, toks = vision_features(model, b["pixels"])
        parts = heads.loss(feats, toks, b)
        parts["words"] = word_alignment_loss(toks, table.weight, b["tok_frac"], *words)
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step == 10 and steps >= UNTIMED:
            per = (time.time() - t_phase) / 10
            steps = max(int(budget_s / per), 20)
            log(f"phase A: {per:.2f} s/step -> {steps} steps")
        if step % 25 == 0 or step == steps:
            named = " ".join(f"{k} {v.item():.3f}" for k, v in parts.items())
            log(f"A {step}/{steps} loss {loss.item():.3f} {named}")
    return steps
