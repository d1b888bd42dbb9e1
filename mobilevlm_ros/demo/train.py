"""Train the demo model: a small MobileVLM (CLIP tower -> LDPv2 -> LLaMA) that sees the generated world.

    python -m mobilevlm_ros.demo.train --out DIR [--minutes M | --vision-steps N --steps M] [--smoke]

Two phases, both seeded and step-based (same steps -> same weights on the same machine):
  A. vision: the tower and the projector learn from dense targets the generator gives for free
     (per-patch colour+shape class; per image token: class fractions, object centre, and the box
     of the object it covers), through small heads that are thrown away afterwards.
  B. VLM: the whole model on question/answer sequences in the v1 prompt format, loss on answer
     tokens (+ EOS) only; the dense loss stays on at a lower weight so the tower keeps what it
     learned. A pointer loss teaches one attention head to look at the object a phrase names
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
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..model.config import MobileVLMConfig
from ..model.reference import MobileVLM
from ..model.synthetic import _clip_config, _preprocessor_config, official_config, write_tokenizer_config
from ..model.tokenizer_train import train_tokenizer
from ..runtime.grounding import box_iou, find_boxes
from ..runtime.image import pad_geometry
from ..runtime.prompt import SYSTEM_V1, build_prompt, tokenize_prompt
from ..runtime.tokenizer import Tokenizer
from . import scenes as S

VAL_SEED = 9_000_000
EVAL_SEED = 10_000_000
N_CLASSES = 1 + len(S.COLOURS) * len(S.SHAPES)  # background + colour x shape

# The demo preset: 224 px / patch 16 -> 14x14 patches -> LDPv2 -> 7x7 = 49 image tokens.
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              image_size=224, patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=128)
LLM = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6, vocab_size=1024,
           max_position_embeddings=512)
# Features of the tower's last layer (before post-layernorm): with 4 layers, -2 would leave a
# quarter of the tower unused. The key is a standard LLaVA/MobileVLM config value.
SELECT_LAYER = -1
SMOKE_VISION = dict(VISION, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    image_size=112, projection_dim=32)
SMOKE_LLM = dict(LLM, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)


def class_of(colour: str, shape: str) -> int:
    return 1 + S.COLOURS.index(colour) * len(S.SHAPES) + S.SHAPES.index(shape)


# --- data ---------------------------------------------------------------------------------------

def _pixels(scene: S.Scene, size: int) -> np.ndarray:
    """The runtime's preprocessing (runtime/image.preprocess), as float32 (3, S, S)."""
    from ..runtime.image import preprocess

    return preprocess(scene.image, size)[0]


def dense_targets(scene: S.Scene, size: int, patch: int) -> Dict[str, np.ndarray]:
    """Per-patch class (G x G), per image token (T = ceil(G/2)^2): class fractions, centre flag, box, box mask."""
    g = pad_geometry(scene.width, scene.height)
    inst = np.zeros((g.side, g.side), np.uint8)
    inst[g.offset_y:g.offset_y + scene.height, g.offset_x:g.offset_x + scene.width] = scene.instances
    inst = np.asarray(Image.fromarray(inst).resize((size, size), Image.NEAREST))
    k = len(scene.objects)
    grid, tg = size // patch, (size // patch + 1) // 2
    pad = tg * 2 - grid
    # Fraction of each patch / image token covered by each instance (0 = background).
    inst_frac = np.eye(k + 1, dtype=np.float32)[inst].reshape(grid, patch, grid, patch, k + 1).mean((1, 3))
    tok_inst = np.pad(inst_frac, ((0, pad), (0, pad), (0, 0))).reshape(tg, 2, tg, 2, k + 1).mean((1, 3))
    lut = np.array([0] + [class_of(o.colour, o.shape) for o in scene.objects], np.int64)
    to_cls = np.eye(N_CLASSES, dtype=np.float32)[lut]  # (k + 1, C)
    patch_cls = (inst_frac @ to_cls).argmax(-1)
    tok_frac = tok_inst @ to_cls
    tok_frac[..., 0] += 1.0 - tok_frac.sum(-1)  # the padded border of an odd grid counts as background
    centre = np.zeros((tg, tg), np.float32)
    box = np.zeros((tg, tg, 4), np.float32)
    box_w = np.zeros((tg, tg), np.float32)
    owner = np.zeros((tg, tg), np.int64)  # i + 1 where object i owns the image token, 0 elsewhere
    for i, o in enumerate(scene.objects):
        nb = np.asarray(S.normalized_box(scene, o), np.float32)
        cx, cy = (nb[0] + nb[2]) / 2, (nb[1] + nb[3]) / 2
        tx, ty = min(int(cx * tg), tg - 1), min(int(cy * tg), tg - 1)
        centre[ty, tx] = 1.0
        # Tokens this object covers (the most of all objects there), and always its centre token.
        f = tok_inst[..., i + 1]
        own = (f >= 0.1) & (f >= tok_inst[..., 1:].max(-1) - 1e-6)
        own[ty, tx] = True
        box[own] = nb
        box_w[own] = 1.0
        owner[own] = i + 1
    return dict(patch_cls=patch_cls.reshape(-1), tok_frac=tok_frac.reshape(-1, N_CLASSES),
                centre=centre.reshape(-1), box=box.reshape(-1, 4), box_w=box_w.reshape(-1), owner=owner.reshape(-1))


def scene_sample(seed: int, size: int, patch: int, max_objects: int = S.MAX_OBJECTS, with_text: bool = True) -> dict:
    """Everything one training image needs: pixels, dense targets, and its (kind, question, answer) list."""
    scene = S.sample_scene(seed, max_objects)
    out = dict(scene=scene, pixels=_pixels(scene, size), **dense_targets(scene, size, patch))
    if with_text:
        qa = S.qa_pairs(scene, seed)
        # A grounding question for every nameable object: boxes need the most practice, and the
        # packed row computes the image once for all of them.
        asked = {q for k, q, _ in qa if k == "ground"}
        for o in scene.objects:
            phrase = S.referring_phrase(scene, o)
            q = S.grounding_question(phrase) if phrase else None
            if q and q not in asked:
                qa.append(("ground", q, S.grounding_answer(scene, o)))
        out["qa"] = qa
    return out


def _batch_job(args):
    seeds, size, patch, max_objects, with_text = args
    return [scene_sample(s, size, patch, max_objects, with_text) for s in seeds]


def collate_dense(samples: List[dict]) -> Dict[str, torch.Tensor]:
    keys = ("pixels", "patch_cls", "tok_frac", "centre", "box", "box_w", "owner")
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in keys}


# --- tokenizer ----------------------------------------------------------------------------------

def demo_corpus(n_scenes: int = 3000) -> List[str]:
    """The text the model will read and write: the system prompt, questions and answers of demo scenes."""
    lines = [SYSTEM_V1 + " USER:"] * 200  # as often as the questions: whole words, a short prompt
    for seed in range(n_scenes):
        scene = S.make_scene(8_000_000 + seed, 160, 120)  # small frames: only the text matters here
        for _, q, a in S.qa_pairs(scene, seed):
            lines.append(f"{q} ASSISTANT: {a}")
    for c in S.COLOURS:
        for s in S.SHAPES:
            lines.append(S.yesno_question(c, s) + " ASSISTANT: Yes No")
    lines.append("0 1 2 3 4 5 6 7 8 9 [0.00, 0.50, 1.00] Describe the image briefly.")
    return lines


class TextCodec:
    """Prompt and answer token ids in the runtime's exact split: head (before <image>) | tail (after)."""

    def __init__(self, tokenizer_path: str):
        self.tok = Tokenizer(tokenizer_path)
        ids = tokenize_prompt(self.tok, build_prompt("x"))
        self.head = ids[:ids.index(-200)]
        self._cache: Dict[str, List[int]] = {}

    def question(self, q: str) -> List[int]:
        if q not in self._cache:
            ids = tokenize_prompt(self.tok, build_prompt(q))
            assert ids[:len(self.head)] == self.head
            self._cache[q] = ids[len(self.head) + 1:]
        return self._cache[q]

    def later_question(self, q: str) -> List[int]:
        """A question after an earlier turn: 'USER: {q} ASSISTANT:' (the previous answer ended with </s>)."""
        return self.tok.encode(f"USER: {q} ASSISTANT:", add_bos=False)

    def answer(self, a: str) -> List[int]:
        return self.tok.encode(a, add_bos=False) + [self.tok.eos_id]


# --- model --------------------------------------------------------------------------------------

def build_config(vision: dict, llm: dict) -> dict:
    raw = official_config("ldpnetv2", llm, "clip", vision["hidden_size"])
    raw["_name_or_path"] = "mobilevlm_ros/demo"
    raw["mm_vision_select_layer"] = SELECT_LAYER
    raw["torch_dtype"] = "float32"
    return raw


class DenseHeads(nn.Module):
    """Training-only heads on the tower's patch features and the projector's image tokens."""

    def __init__(self, vision_width: int, hidden: int):
        super().__init__()
        self.patch_cls = nn.Linear(vision_width, N_CLASSES)
        self.tok = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, N_CLASSES + 1 + 4))

    def loss(self, feats: torch.Tensor, tokens: torch.Tensor, batch: dict) -> Dict[str, torch.Tensor]:
        pc = self.patch_cls(feats)  # (B, N, C)
        l_patch = F.cross_entropy(pc.reshape(-1, N_CLASSES), batch["patch_cls"].reshape(-1))
        out = self.tok(tokens)  # (B, T, C + 5)
        logp = F.log_softmax(out[..., :N_CLASSES], -1)
        l_frac = -(batch["tok_frac"] * logp).sum(-1).mean()
        l_centre = F.binary_cross_entropy_with_logits(out[..., N_CLASSES], batch["centre"], pos_weight=torch.tensor(4.0))
        w = batch["box_w"]
        l_box = (F.smooth_l1_loss(torch.sigmoid(out[..., N_CLASSES + 1:]), batch["box"], reduction="none", beta=0.02)
                 .sum(-1) * w).sum() / w.sum().clamp(min=1) * 10
        return dict(patch=l_patch, frac=l_frac, centre=l_centre, box=l_box)


def vision_features(model: MobileVLM, pixels: torch.Tensor):
    """(patch features (B, N, C), image tokens (B, T, H)) through the same path as VisionEncoder.forward."""
    enc = model.vision
    hs = enc.tower(pixels, output_hidden_states=True).hidden_states[enc.select_layer][:, 1:]
    return hs, enc.projector(hs)


def rescale_projector(model: MobileVLM, target_std: float, pixels: torch.Tensor) -> float:
    """Scale LDPv2's output (linear in the last MLP layer and the PEG conv bias) to `target_std`."""
    with torch.no_grad():
        std = float(model.vision(pixels).std())
        a = target_std / max(std, 1e-8)
        p = model.vision.projector
        p.mlp.mlp[2].weight.mul_(a)
        p.mlp.mlp[2].bias.mul_(a)
        p.peg.peg[0].bias.mul_(a)
    return std


# --- sequences ----------------------------------------------------------------------------------

# Loss weight of one answer (spread over its tokens): every question counts, boxes count double.
TASK_WEIGHT = {"caption": 1.0, "count": 1.0, "ground": 2.0, "colour": 1.0, "yesno": 1.0}


def looked_at(scene: S.Scene, kind: str, question: str, answer: List[int], colour_ids: List[int],
              shape_ids: List[int]) -> List[tuple]:
    """(answer token index, object index) pairs: the object the model should look at to write that token.

    Every token of a box, colour or "Yes" answer is about the object its question names; in a
    caption, the colour and shape words of each object (caption_order) are about that object.
    """
    if kind == "caption":
        order = [scene.objects.index(o) for o in S.caption_order(scene)]
        out, k = [], -1
        for j, t in enumerate(answer):
            if t in colour_ids:
                k += 1
            if (t in colour_ids or t in shape_ids) and 0 <= k < len(order):
                out.append((j, order[k]))
        return out
    if kind == "colour":
        hits = [i for i, o in enumerate(scene.objects) if f"the {o.shape}?" in question]
    elif kind in ("ground", "yesno"):
        hits = [i for i, o in enumerate(scene.objects) if o.name in question]
    else:
        hits = []
    return [(j, hits[0]) for j in range(len(answer))] if len(hits) == 1 else []


def build_batch(model: MobileVLM, codec: TextCodec, samples: List[dict], image_embeds: torch.Tensor, seed: int,
                pointer_words: tuple = ((), ())):
    """All questions about one image packed in one row: [head | image | turn 1 | turn 2 ...].

    Each turn is exactly the runtime's single-question prompt ("\n{q} ASSISTANT:" + answer + EOS):
    a block mask lets it see [head | image] and itself only, and its positions restart after the
    image, so a row is mathematically the same as separate sequences while [head | image] is
    computed once per image (about twice the questions per second on the CPU).
    Returns inputs_embeds (B, L, H), labels (B, L), per-position loss weights (B, L), the 4D float
    attention mask (B, 1, L, L), position ids (B, L), and the pointer targets (row, position,
    object index) of `looked_at` as three long tensors (None when no turn has one); pointer_words
    are the (colour, shape) word ids `looked_at` finds objects by in captions.
    """
    rng = np.random.default_rng(seed)
    table = model.llm.get_input_embeddings()
    n_head, n_img = len(codec.head), image_embeds.shape[1]
    n_pre = n_head + n_img
    rows = []
    for s in samples:
        turns = []
        for j in rng.permutation(len(s["qa"])):
            kind, q, a = s["qa"][j]
            a_ids = codec.answer(a)
            turns.append((codec.question(q), a_ids, TASK_WEIGHT[kind], looked_at(s["scene"], kind, q, a_ids, *pointer_words)))
        rows.append(turns)
    tail_len = max(sum(len(q) + len(a) for q, a, _, _ in t) for t in rows)
    L = n_pre + tail_len
    tail = torch.zeros(len(rows), tail_len, dtype=torch.long)
    labels = torch.full((len(rows), L), -100, dtype=torch.long)
    weights = torch.zeros(len(rows), L)
    allow = torch.zeros(len(rows), L, L, dtype=torch.bool)
    allow[:, :, :n_pre] = True
    allow[:, :n_pre, :n_pre] = torch.tril(torch.ones(n_pre, n_pre, dtype=torch.bool))
    pos = torch.arange(L).repeat(len(rows), 1)
    pointer = []
    for r, turns in enumerate(rows):
        at = 0
        for q, a, w, look in turns:
            seq = q + a
            n = len(seq)
            tail[r, at:at + n] = torch.tensor(seq)
            p0 = n_pre + at
            allow[r, p0:p0 + n, p0:p0 + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            pos[r, p0:p0 + n] = torch.arange(n_pre, n_pre + n)
            # The logit at position p predicts token p + 1: answer tokens from the one before each.
            start = p0 + len(q) - 1
            labels[r, start:start + len(a)] = torch.tensor(a)
            weights[r, start:start + len(a)] = w / len(a)
            pointer += [(r, start + j, obj) for j, obj in look]
            at += n
    mask = torch.zeros(len(rows), 1, L, L).masked_fill(~allow[:, None], float("-inf"))
    head = table(torch.tensor(codec.head)).unsqueeze(0).expand(len(rows), -1, -1)
    embeds = torch.cat([head, image_embeds, table(tail)], dim=1)
    pointer_t = tuple(torch.tensor(c, dtype=torch.long) for c in zip(*pointer)) if pointer else None
    return embeds, labels, weights, mask, pos, pointer_t


def lm_loss(model: MobileVLM, embeds, labels, weights, mask, pos):
    """Weighted answer-token cross-entropy, and the hidden states of every layer (for pointer_loss)."""
    out = model.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    hidden = out.last_hidden_state
    sel = labels != -100
    logits = model.llm.lm_head(hidden[sel])
    ce = F.cross_entropy(logits, labels[sel], reduction="none")
    return (ce * weights[sel]).sum() / weights[sel].sum(), out.hidden_states


# The attention head taught to look at the object a phrase names (phrase-conditioned pointer):
# layer 0 can bring the phrase to the answer positions, this head then finds the object's image
# tokens, and the later layers read its box / colour from what it fetched.
POINTER_LAYER, POINTER_HEAD = 1, 0


def pointer_loss(model: MobileVLM, hidden_states, mask, pos, pointer, owner: torch.Tensor, n_head: int):
    """-log(attention mass on the target object's image tokens) of one head, at the `pointer` positions.

    Recomputes that head's attention probabilities exactly as LlamaAttention does (same q/k
    projections, RoPE, scaling and additive mask) from the layer's input.
    """
    rows, at, obj = pointer
    index = min(POINTER_LAYER, len(model.llm.model.layers) - 1)  # the 1-layer smoke model: its only layer
    layer = model.llm.model.layers[index]
    attn = layer.self_attn
    d = attn.head_dim
    kv = POINTER_HEAD // attn.num_key_value_groups
    x = layer.input_layernorm(hidden_states[index])
    q = F.linear(x, attn.q_proj.weight[POINTER_HEAD * d:(POINTER_HEAD + 1) * d])
    k = F.linear(x, attn.k_proj.weight[kv * d:(kv + 1) * d])
    cos, sin = model.llm.model.rotary_emb(x, pos)
    q, k = apply_rotary_pos_emb(q[:, None], k[:, None], cos, sin)
    scores = (q[:, 0] @ k[:, 0].transpose(1, 2)) * attn.scaling + mask[:, 0]  # (B, L, L)
    logp = F.log_softmax(scores[rows, at], -1)  # (N, L)
    n_img = owner.shape[1]
    target = owner[rows] == (obj + 1)[:, None]  # (N, T)
    keep = target.any(-1)  # an object whose tokens a later one covered entirely has no target
    if not keep.any():
        return scores.sum() * 0
    img = logp[:, n_head:n_head + n_img].masked_fill(~target, float("-inf"))
    return -img.logsumexp(-1)[keep].mean()


def word_ids(codec: TextCodec, words) -> List[int]:
    """The single token each answer word is written with ("▁red")."""
    out = []
    for w in words:
        ids = codec.tok.encode(f"a {w}", add_bos=False)[1:]
        if len(ids) != 1:
            raise ValueError(f"{w!r} is not one token in the demo vocabulary: {ids}")
        out.append(ids[0])
    return out


def word_alignment_loss(tokens: torch.Tensor, table: torch.Tensor, tok_frac: torch.Tensor,
                        colour_ids: List[int], shape_ids: List[int]) -> torch.Tensor:
    """Image tokens covered by an object point (cosine) towards the embeddings of its colour and shape words.

    The language model then finds "red" in the image the way it finds a repeated word in text.
    """
    frac, cls = tok_frac[..., 1:].max(-1)  # dominant object class of each token (0..11)
    sel = frac >= 0.25
    if not sel.any():
        return tokens.sum() * 0
    t = F.normalize(tokens[sel], dim=-1)
    cls = cls[sel]
    n_shapes = len(S.SHAPES)
    lc = t @ F.normalize(table[colour_ids], dim=-1).T * 10
    ls = t @ F.normalize(table[shape_ids], dim=-1).T * 10
    return F.cross_entropy(lc, cls // n_shapes) + F.cross_entropy(ls, cls % n_shapes)


# --- quick evaluation (PyTorch, greedy) ---------------------------------------------------------

@torch.no_grad()
def quick_eval(model: MobileVLM, codec: TextCodec, size: int, patch: int, n: int = 12) -> dict:
    model.eval()
    hits: Counter = Counter()
    tries: Counter = Counter()
    for k in range(n):
        seed = VAL_SEED + k
        s = scene_sample(seed, size, patch)
        scene = s["scene"]
        img = model.vision(torch.from_numpy(s["pixels"])[None])
        for kind, q, a in s["qa"][:4]:
            ids = codec.head + [-200] + codec.question(q)
            out = model.llm.generate(inputs_embeds=model.embed(ids, img), max_new_tokens=32, do_sample=False,
                                     attention_mask=torch.ones(1, len(ids) - 1 + img.shape[1], dtype=torch.long))
            text = codec.tok.decode(out[0].tolist()).strip()
            tries[kind] += 1
            if kind == "caption":
                hits[kind] += S.parse_caption(text) == S.scene_multiset(scene)
            elif kind == "ground":
                boxes = find_boxes(text, scene.width, scene.height)
                truth = [o for o in scene.objects if S.grounding_answer(scene, o) == a][0]
                hits[kind] += bool(boxes) and box_iou(boxes[0].xyxy, truth.box) >= 0.5
            else:
                hits[kind] += text == a
    model.train()
    return {k: round(hits[k] / tries[k], 3) for k in tries}


# --- checkpoint ---------------------------------------------------------------------------------

def save_checkpoint(model: MobileVLM, raw: dict, vision: dict, tokenizer_path: str, out: str, info: dict) -> None:
    """Write the released layout (tower inside model.safetensors, its CLIP config in clip/), atomically."""
    from safetensors.torch import save_file

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "clip"))
    sd = model.state_dict()
    tensors = {name: sd[ours].detach().to(torch.float32).contiguous() for name, ours in model.checkpoint_names().items()}
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    with open(os.path.join(tmp, "clip", "config.json"), "w") as f:
        json.dump(_clip_config(vision), f, indent=2)
    with open(os.path.join(tmp, "clip", "preprocessor_config.json"), "w") as f:
        json.dump(_preprocessor_config(vision["image_size"]), f, indent=2)
    shutil.copy(tokenizer_path, os.path.join(tmp, "tokenizer.model"))
    write_tokenizer_config(tmp, raw["max_position_embeddings"])
    with open(os.path.join(tmp, "train_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


# --- training -----------------------------------------------------------------------------------

def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _set_lr(opt, step, total, warmup):
    for g in opt.param_groups:
        g["lr"] = _lr(step, total, g["peak"], warmup)


class Log:
    def __init__(self, path: Optional[str]):
        self.f = open(path, "a") if path else None
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()


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
        train_tokenizer(tok_path, demo_corpus(300 if smoke else 3000), vocab_size=llm["vocab_size"], seed=seed)
    codec = TextCodec(tok_path)
    log(f"tokenizer: head {len(codec.head)} tokens; sample answer "
        f"{codec.tok._sp.encode('[0.48, 0.12, 0.76, 0.40]', out_type=str)}")

    raw = build_config(vision, llm)
    model = MobileVLM(MobileVLMConfig.from_dict(raw, vision), attn_implementation="sdpa")
    with torch.no_grad():  # text embeddings at the scale the projector output is brought to
        model.llm.get_input_embeddings().weight.normal_(0.0, 0.05)
    if init:
        from ..model.loader import load_checkpoint

        model.load_state_dict(load_checkpoint(init).state_dict())
        vision_steps = -1
    heads = DenseHeads(vision["hidden_size"], llm["hidden_size"])
    table = model.llm.get_input_embeddings()
    colour_ids, shape_ids = word_ids(codec, S.COLOURS), word_ids(codec, S.SHAPES)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters; {model.config.num_image_tokens} image tokens")

    pool = mp.get_context("fork").Pool(workers) if workers > 0 else None

    def batches(start_seed: int, per: int, max_objects_fn, with_text: bool, prefetch: int = 3):
        """Batch i holds scenes start_seed + i*per ...: the same data whatever the timing (bounded read-ahead)."""
        def job(i):
            return (list(range(start_seed + i * per, start_seed + (i + 1) * per)), size, patch, max_objects_fn(i), with_text)

        i, pending = 0, []
        while True:
            if pool is None:
                yield _batch_job(job(i))
                i += 1
                continue
            while len(pending) < prefetch:
                pending.append(pool.apply_async(_batch_job, (job(i),)))
                i += 1
            yield pending.pop(0).get()

    info = dict(seed=seed, smoke=smoke, vision=vision, llm=llm, select_layer=SELECT_LAYER, init=init, lr_scale=lr_scale,
                pointer_weight=pointer_weight)
    t_start = time.time()

    # --- phase A: vision from dense targets ---
    vparams = list(model.vision.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW([dict(params=vparams, peak=2e-3 * lr_scale)], weight_decay=0.01, betas=(0.9, 0.98))
    budget_a = minutes * 60 * 0.15
    if not vision_steps:  # time 10 steps, then fix the count
        vision_steps = 10 ** 9
    it = batches(0, vision_batch, lambda i: S.MAX_OBJECTS, False)
    t_phase, step = time.time(), 0
    while step < vision_steps:
        b = collate_dense(next(it))
        _set_lr(opt, step, vision_steps if vision_steps < 10 ** 9 else 1000, 50)
        feats, toks = vision_features(model, b["pixels"])
        parts = heads.loss(feats, toks, b)
        parts["words"] = word_alignment_loss(toks, table.weight, b["tok_frac"], colour_ids, shape_ids)
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vparams, 1.0)
        opt.step()
        step += 1
        if step == 10 and vision_steps >= 10 ** 9:
            per = (time.time() - t_phase) / 10
            vision_steps = max(int(budget_a / per), 20)
            log(f"phase A: {per:.2f} s/step -> {vision_steps} steps")
        if step % 25 == 0 or step == vision_steps:
            log(f"A {step}/{vision_steps} loss {loss.item():.3f} " + " ".join(f"{k} {v.item():.3f}" for k, v in parts.items()))
    if pool:
        pool.terminate()
        pool = mp.get_context("fork").Pool(workers)
    info.update(vision_steps=vision_steps, vision_batch=vision_batch, vision_minutes=round((time.time() - t_phase) / 60, 2))

    if not init:
        probe = torch.from_numpy(np.stack([scene_sample(VAL_SEED + 500 + i, size, patch, with_text=False)["pixels"]
                                           for i in range(8)]))
        before = rescale_projector(model, 0.05, probe)
        log(f"projector output std {before:.3f} -> 0.05 (text embedding std 0.05)")

    # --- phase B: the VLM ---
    tower = list(model.vision.tower.parameters())
    proj = list(model.vision.projector.parameters())
    groups = [dict(params=tower, peak=3e-4 * lr_scale), dict(params=proj, peak=1e-3 * lr_scale),
              dict(params=list(model.llm.parameters()), peak=2e-3 * lr_scale),
              dict(params=list(heads.parameters()), peak=1e-3 * lr_scale)]
    opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
    budget_b = minutes * 60 - (time.time() - t_start) - 60
    auto = not steps
    total = steps or 10 ** 9

    def curriculum(i: int) -> int:
        """Most objects per scene for batch i: 1 for the first 10 % of phase B, then 2, 3, and 4 from 40 %."""
        if init:
            return S.MAX_OBJECTS
        if total >= 10 ** 9:  # step count not fixed yet (the first timed steps): the first stage
            return 1
        return 1 if i < 0.1 * total else 2 if i < 0.25 * total else 3 if i < 0.4 * total else S.MAX_OBJECTS

    it = batches(2_000_000 if init else 1_000_000, batch, curriculum, True)
    t_phase, step, last_eval, last_save, best = time.time(), 0, time.time(), time.time(), -1.0
    ema = ema_ptr = None
    while step < total:
        samples = next(it)
        b = collate_dense(samples)
        _set_lr(opt, step, total if total < 10 ** 9 else 2000, 100)
        feats, toks = vision_features(model, b["pixels"])
        parts = heads.loss(feats, toks, b)
        parts["words"] = word_alignment_loss(toks, table.weight, b["tok_frac"], colour_ids, shape_ids)
        embeds, labels, weights, mask, pos, pointer = build_batch(model, codec, samples, toks, seed * 1_000_003 + step,
                                                                  (colour_ids, shape_ids))
        l_lm, hidden_states = lm_loss(model, embeds, labels, weights, mask, pos)
        l_ptr = (pointer_loss(model, hidden_states, mask, pos, pointer, b["owner"], len(codec.head))
                 if pointer is not None else l_lm * 0)
        # Continuing from a checkpoint, the dense heads start untrained: only the word alignment stays.
        loss = l_lm + pointer_weight * l_ptr + 0.3 * (parts["words"] if init else sum(parts.values()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        ema = l_lm.item() if ema is None else 0.95 * ema + 0.05 * l_lm.item()
        ema_ptr = l_ptr.item() if ema_ptr is None else 0.95 * ema_ptr + 0.05 * l_ptr.item()
        if auto and step == 10:
            per = (time.time() - t_phase) / 10
            total = max(int(budget_b / (per * 1.04)), 20)  # ~4 % for the periodic evaluations
            log(f"phase B: {per:.2f} s/step -> {total} steps")
        if step % 25 == 0 or step == total:
            log(f"B {step}/{total} lm {ema:.4f} pointer {ema_ptr:.3f} dense {sum(parts.values()).item():.3f} "
                f"lr {opt.param_groups[2]['lr']:.2e} seqs {embeds.shape[0]}x{embeds.shape[1]}")
        now = time.time()
        if not smoke and (now - last_eval > eval_every_s or step == total):
            scores = quick_eval(model, codec, size, patch)
            log(f"eval @ {step}: {scores}")
            last_eval = time.time()
            score = float(np.mean(list(scores.values())))
            if score >= best:
                best = score
                save_checkpoint(model, raw, vision, tok_path, os.path.join(out, "best"),
                                dict(info, steps=step, eval=scores))
        if now - last_save > save_every_s or step == total:
            info.update(steps=step, batch=batch, minutes=round((time.time() - t_start) / 60, 2))
            save_checkpoint(model, raw, vision, tok_path, os.path.join(out, "last"), info)
            last_save = time.time()
    if pool:
        pool.terminate()
    info.update(steps=total, batch=batch, minutes=round((time.time() - t_start) / 60, 2))
    save_checkpoint(model, raw, vision, tok_path, os.path.join(out, "last"), info)
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
    p.add_argument("--pointer-weight", type=float, default=1.0, help="weight of the phrase-conditioned pointer loss")
    a = p.parse_args(argv)
    train(a.out, a.minutes, a.vision_steps, a.steps, a.smoke, a.seed, workers=a.workers, init=a.init,
          lr_scale=a.lr_scale, pointer_weight=a.pointer_weight)


if __name__ == "__main__":
    main()
