"""What the trainer learns from: generated scenes with their dense targets, text, and packed rows.

The scene world (mobilevlm_ros.demo.scenes) gives every label for free: per-patch classes and,
per image token, class fractions, object centre and box (dense_targets); the questions and
answers of a scene (scene_sample); and which object each answer token is about (looked_at).
Text goes through the runtime's own prompt code (TextCodec), so training sees exactly the token
ids the robot feeds the model.

Scene seeds: training < 9_000_000 (phase A from 0, phase B from 1_000_000, a continuation from
2_000_000), in-training validation VAL_SEED+, evaluation (mobilevlm_ros.demo.evaluate) EVAL_SEED+.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List

import numpy as np
import torch
from PIL import Image

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.model.reference import MobileVLM
from mobilevlm_ros.runtime.image import pad_geometry, preprocess
from mobilevlm_ros.runtime.prompt import IMAGE_TOKEN_INDEX, SYSTEM_V1, build_prompt, tokenize_prompt
from mobilevlm_ros.runtime.tokenizer import Tokenizer

VAL_SEED = 9_000_000
EVAL_SEED = 10_000_000
N_CLASSES = 1 + len(S.COLOURS) * len(S.SHAPES)  # background + colour x shape


def class_of(colour: str, shape: str) -> int:
    return 1 + S.COLOURS.index(colour) * len(S.SHAPES) + S.SHAPES.index(shape)


# --- images and dense targets -------------------------------------------------------------------

def _pixels(scene: S.Scene, size: int) -> np.ndarray:
    """The runtime's preprocessing (runtime/image.preprocess), as float32 (3, S, S)."""
    return preprocess(scene.image, size)[0]


def dense_targets(scene: S.Scene, size: int, patch: int) -> Dict[str, np.ndarray]:
    """Per-patch class (G x G); per image token (T = ceil(G/2)^2): class fractions, centre flag, box,
    box mask, and owner (1 + the index of the object whose box it learns, 0: none)."""
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
                centre=centre.reshape(-1), box=box.reshape(-1, 4), box_w=box_w.reshape(-1),
                owner=owner.reshape(-1))


def scene_sample(seed: int, size: int, patch: int, max_objects: int = S.MAX_OBJECTS,
                 with_text: bool = True) -> dict:
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


def collate_dense(samples: List[dict]) -> Dict[str, torch.Tensor]:
    keys = ("pixels", "patch_cls", "tok_frac", "centre", "box", "box_w", "owner")
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in keys}


def _batch_job(args):
    seeds, size, patch, max_objects, with_text = args
    return [scene_sample(s, size, patch, max_objects, with_text) for s in seeds]


def scene_batches(pool, size: int, patch: int, start_seed: int, per: int, max_objects: Callable[[int], int],
                  with_text: bool, prefetch: int = 3) -> Iterator[List[dict]]:
    """Batch i holds scenes start_seed + i*per ...: the same data whatever the timing (bounded read-ahead).

    Generated in `pool` (a multiprocessing pool; None: in this process). max_objects(i) is the
    most objects per scene of batch i, asked when the batch is queued (up to `prefetch` ahead).
    """
    def job(i):
        seeds = list(range(start_seed + i * per, start_seed + (i + 1) * per))
        return seeds, size, patch, max_objects(i), with_text

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


# --- text ---------------------------------------------------------------------------------------

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
        self.head = ids[:ids.index(IMAGE_TOKEN_INDEX)]
        self._cache: Dict[str, List[int]] = {}

    def question(self, q: str) -> List[int]:
        if q not in self._cache:
            ids = tokenize_prompt(self.tok, build_prompt(q))
            assert ids[:len(self.head)] == self.head
            self._cache[q] = ids[len(self.head) + 1:]
        return self._cache[q]

    def answer(self, a: str) -> List[int]:
        return self.tok.encode(a, add_bos=False) + [self.tok.eos_id]


def word_ids(codec: TextCodec, words) -> List[int]:
    """The single token each answer word is written with ("▁red")."""
    out = []
    for w in words:
        ids = codec.tok.encode(f"a {w}", add_bos=False)[1:]
        if len(ids) != 1:
            raise ValueError(f"{w!r} is not one token in the demo vocabulary: {ids}")
        out.append(ids[0])
    return out


# --- packed question/answer rows ----------------------------------------------------------------

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


def build_batch(model: MobileVLM, codec: TextCodec, samples: List[dict], image_embeds: torch.Tensor,
                seed: int, pointer_words: tuple = ((), ())):
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
            look = looked_at(s["scene"], kind, q, a_ids, *pointer_words)
            turns.append((codec.question(q), a_ids, TASK_WEIGHT[kind], look))
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
