"""A quick check during training: greedy PyTorch answers on a few validation scenes.

It picks OUT/best; the real measure is mobilevlm_ros.demo.evaluate, through the exported engine.
"""

from __future__ import annotations

from collections import Counter

import torch

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.model.reference import MobileVLM
from mobilevlm_ros.runtime.grounding import box_iou, find_boxes
from mobilevlm_ros.runtime.prompt import IMAGE_TOKEN_INDEX
from training.data import VAL_SEED, TextCodec, scene_sample


@torch.no_grad()
def quick_eval(model: MobileVLM, codec: TextCodec, size: int, patch: int, n: int = 12) -> dict:
    """Accuracy per question kind on the first 4 questions of scenes VAL_SEED ... VAL_SEED + n - 1."""
    model.eval()
    hits: Counter = Counter()
    tries: Counter = Counter()
    for k in range(n):
        seed = VAL_SEED + k
        s = scene_sample(seed, size, patch)
        scene = s["scene"]
        img = model.vision(torch.from_numpy(s["pixels"])[None])
        for kind, q, a in s["qa"][:4]:
            ids = codec.head + [IMAGE_TOKEN_INDEX] + codec.question(q)
            attention = torch.ones(1, len(ids) - 1 + img.shape[1], dtype=torch.long)
            out = model.llm.generate(inputs_embeds=model.embed(ids, img), max_new_tokens=32, do_sample=False,
                                     attention_mask=attention)
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
