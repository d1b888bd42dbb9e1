"""Phase B: the whole VLM on question/answer rows in the v1 prompt format.

The loss is on answer tokens (+ EOS) only (lm_loss), plus the pointer loss that teaches one
attention head to look at the object a phrase names (pointer_loss); the dense losses of phase A
stay on at weight 0.3 so the tower keeps what it learned. Scenes grow with a curriculum.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.model.reference import MobileVLM
from training.checkpoint import RunCheckpoints
from training.data import TextCodec, build_batch, collate_dense
from training.losses import lm_loss, pointer_loss, word_alignment_loss
from training.model import DenseHeads, vision_features
from training.schedule import UNTIMED, set_lr


class Curriculum:
    """Most objects per scene for batch i: 1 for the first 10 % of phase B, then 2, 3, and 4 from 40 %.

    total: the phase's step count, UNTIMED while the first steps are being timed (those batches
    are the first stage). A run continuing from a checkpoint gets every scene size from the start.
    """

    def __init__(self, total: int, continuing: bool):
        self.total, self.continuing = total, continuing

    def __call__(self, i: int) -> int:
        if self.continuing:
            return S.MAX_OBJECTS
        if self.total >= UNTIMED:  # step count not fixed yet (the first timed steps): the first stage
            return 1
        total = self.total
        return 1 if i < 0.1 * total else 2 if i < 0.25 * total else 3 if i < 0.4 * total else S.MAX_OBJECTS


def llm_phase(model: MobileVLM, heads: DenseHeads, codec: TextCodec, words: tuple, scenes: Callable,
              checkpoints: RunCheckpoints, *, steps: int, batch: int, budget_s: float, seed: int,
              lr_scale: float, pointer_weight: float, continuing: bool, log: Callable[[str], None]) -> int:
    """Train the whole model for `steps` steps of `batch` scenes; returns the step count.

    words: the (colour, shape) word ids; scenes: training.data.scene_batches without its first
    three arguments (pool, size, patch). steps 0: time 10 steps, then fix the count from budget_s
    (about 4 % left for the periodic evaluations). continuing: from a checkpoint of this trainer
    (no curriculum; scene seeds from 2_000_000 so it sees new scenes; the dense heads start
    untrained, so of the dense losses only the word alignment stays).
    """
    tower = list(model.vision.tower.parameters())
    proj = list(model.vision.projector.parameters())
    groups = [dict(params=tower, peak=3e-4 * lr_scale), dict(params=proj, peak=1e-3 * lr_scale),
              dict(params=list(model.llm.parameters()), peak=2e-3 * lr_scale),
              dict(params=list(heads.parameters()), peak=1e-3 * lr_scale)]
    opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
    auto = not steps
    total = steps or UNTIMED
    curriculum = Curriculum(total, continuing)
    table = model.llm.get_input_embeddings()
    it = scenes(2_000_000 if continuing else 1_000_000, batch, curriculum, True)
    t_phase, step = time.time(), 0
    ema = ema_ptr = None
    while step < total:
        samples = next(it)
        b = collate_dense(samples)
        set_lr(opt, step, total if total < UNTIMED else 2000, 100)
        feats, toks = vision_features(model, b["pixels"])
        parts = heads.loss(feats, toks, b)
        parts["words"] = word_alignment_loss(toks, table.weight, b["tok_frac"], *words)
        embeds, labels, weights, mask, pos, pointer = build_batch(model, codec, samples, toks,
                                                                  seed * 1_000_003 + step, words)
        l_lm, hidden_states = lm_loss(model, embeds, labels, weights, mask, pos)
        l_ptr = (pointer_loss(model, hidden_states, mask, pos, pointer, b["owner"], len(codec.head))
                 if pointer is not None else l_lm * 0)
        loss = l_lm + pointer_weight * l_ptr + 0.3 * (parts["words"] if continuing else sum(parts.values()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        ema = l_lm.item() if ema is None else 0.95 * ema + 0.05 * l_lm.item()
        ema_ptr = l_ptr.item() if ema_ptr is None else 0.95 * ema_ptr + 0.05 * l_ptr.item()
        if auto and step == 10:
            per = (time.time() - t_phase) / 10
            total = max(int(budget_s / (per * 1.04)), 20)  # ~4 % for the periodic evaluations
            curriculum.total = total  # the batches queued from now on follow the real length
            log(f"phase B: {per:.2f} s/step -> {total} steps")
        if step % 25 == 0 or step == total:
            log(f"B {step}/{total} lm {ema:.4f} pointer {ema_ptr:.3f} dense {sum(parts.values()).item():.3f} "
                f"lr {opt.param_groups[2]['lr']:.2e} seqs {embeds.shape[0]}x{embeds.shape[1]}")
        checkpoints.after_step(step, total)
    return total
