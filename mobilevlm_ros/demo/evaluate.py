"""Measure the demo engine on held-out generated scenes, through the ONNX runtime (not PyTorch).

    python -m mobilevlm_ros.demo.evaluate ENGINE_DIR --scenes 500 [--seed-offset N] [--json PATH]
    python -m mobilevlm_ros.demo.evaluate ENGINE_DIR --typed --scenes 200 --seed-offset 20000

Scenes are `scenes.sample_scene(10_000_000 + offset + i)`: seeds the trainer never uses (it
trains on seeds below 9_000_000). Per scene it asks:
  caption   "Describe the image briefly."        exact match of the (colour, shape) multiset
  grounding every object, by its unique phrase   IoU >= 0.5 with the true box, in SOURCE pixels,
                                                 using the first box VLM returns (answer.boxes)
  counting  "How many objects are there?"        exact
  colour    each shape present once              exact colour word
  yes/no    one present and one absent object    exact "Yes" / "No"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from typing import Dict, List, Optional

import numpy as np

from ..runtime.answer_types import AnswerType
from ..runtime.generation import GenerationParams
from ..runtime.grounding import box_iou
from ..runtime.vlm import VLM
from . import scenes as S

EVAL_SEED = 10_000_000


def _box_iou(answer, obj: S.Obj) -> float:
    if not answer.boxes:
        return 0.0
    return box_iou(answer.boxes[0].xyxy, obj.box)


def evaluate(engine_dir: str, n_scenes: int = 500, seed_offset: int = 0, threads: int = 2,
             vlm: Optional[VLM] = None, log=None) -> Dict:
    """Accuracy per task (and per object count) on `n_scenes` held-out scenes."""
    vlm = vlm or VLM(engine_dir, threads=threads)
    params = GenerationParams(max_new_tokens=48)
    hits: Counter = Counter()
    tries: Counter = Counter()
    by_n: Dict[str, Counter] = defaultdict(Counter)
    ious: List[float] = []
    failures: List[dict] = []
    t0 = time.time()

    def record(kind: str, ok: bool, n: int, seed: int, question: str, got: str, want: str) -> None:
        tries[kind] += 1
        hits[kind] += bool(ok)
        by_n[f"{kind}@{n}"]["tries"] += 1
        by_n[f"{kind}@{n}"]["hits"] += bool(ok)
        if not ok and len(failures) < 50:
            failures.append(dict(seed=seed, kind=kind, question=question, got=got, want=want))

    for i in range(n_scenes):
        seed = EVAL_SEED + seed_offset + i
        scene = S.sample_scene(seed)
        n = len(scene.objects)
        rng = np.random.default_rng(seed)

        a = vlm.describe(scene.image, S.caption_question(), params)
        record("caption", S.parse_caption(a.text) == S.scene_multiset(scene), n, seed, "caption", a.text,
               S.caption_answer(scene))

        a = vlm.describe(scene.image, S.count_question(), params)
        record("counting", a.text == S.count_answer(scene), n, seed, "count", a.text, S.count_answer(scene))

        for obj in scene.objects:
            phrase = S.referring_phrase(scene, obj)
            if phrase is None:
                continue
            a = vlm.ground(scene.image, phrase, params)
            iou = _box_iou(a, obj)
            ious.append(iou)
            record("grounding", iou >= 0.5, n, seed, phrase, a.text, S.grounding_answer(scene, obj))

        for shape in S.SHAPES:
            want = S.colour_answer(scene, shape)
            if want is None:
                continue
            a = vlm.describe(scene.image, S.colour_question(shape), params)
            record("colour", a.text == want, n, seed, S.colour_question(shape), a.text, want)

        present = scene.objects[int(rng.integers(n))]
        absent = [(c, s) for c in S.COLOURS for s in S.SHAPES if (c, s) not in S.scene_multiset(scene)]
        c, s = absent[int(rng.integers(len(absent)))]
        for colour, shape in ((present.colour, present.shape), (c, s)):
            want = S.yesno_answer(scene, colour, shape)
            a = vlm.describe(scene.image, S.yesno_question(colour, shape), params)
            record("yesno", a.text == want, n, seed, S.yesno_question(colour, shape), a.text, want)

        if log and (i + 1) % 50 == 0:
            log(f"{i + 1}/{n_scenes} scenes, {time.time() - t0:.0f}s: " + _line(hits, tries))

    return dict(
        engine=engine_dir,
        scenes=n_scenes,
        seeds=[EVAL_SEED + seed_offset, EVAL_SEED + seed_offset + n_scenes - 1],
        accuracy={k: round(hits[k] / tries[k], 4) for k in sorted(tries)},
        questions={k: tries[k] for k in sorted(tries)},
        by_object_count={k: round(v["hits"] / v["tries"], 4) for k, v in sorted(by_n.items())},
        grounding_mean_iou=round(float(np.mean(ious)), 4) if ious else None,
        seconds=round(time.time() - t0, 1),
        failures=failures,
    )


def typed_accuracy(engine_dir: str, n_scenes: int = 200, seed_offset: int = 20_000,
                   threads: int = 2) -> Dict:
    """Counting and yes/no (one object present, one absent per scene), each asked in free text and
    typed (integer 0..MAX_OBJECTS, bool), on the same held-out scenes; and the typed yes/no answers'
    mean confidence when right and when wrong."""
    vlm = VLM(engine_dir, threads=threads)
    params = GenerationParams(max_new_tokens=16)
    counting, yes_no = AnswerType("integer", minimum=0, maximum=S.MAX_OBJECTS), AnswerType("bool")
    hits: Counter = Counter()
    confidence: Dict[bool, List[float]] = {True: [], False: []}
    for i in range(n_scenes):
        seed = EVAL_SEED + seed_offset + i
        scene, rng = S.sample_scene(seed), np.random.default_rng(seed)
        n = len(scene.objects)
        hits["counting free"] += vlm.describe(scene.image, S.count_question(), params).text == str(n)
        hits["counting typed"] += vlm.describe(scene.image, S.count_question(), params,
                                               answer_type=counting).value == n
        present = scene.objects[int(rng.integers(n))]
        absent = [(c, s) for c in S.COLOURS for s in S.SHAPES if (c, s) not in S.scene_multiset(scene)]
        c, s = absent[int(rng.integers(len(absent)))]
        for (colour, shape), want in (((present.colour, present.shape), True), ((c, s), False)):
            question = S.yesno_question(colour, shape)
            free = vlm.describe(scene.image, question, params)
            hits["yes/no free"] += free.text == ("Yes" if want else "No")
            a = vlm.describe(scene.image, question, params, answer_type=yes_no)
            hits["yes/no typed"] += a.value is want
            confidence[a.value is want].append(a.confidence)
    tries = {"counting free": n_scenes, "counting typed": n_scenes, "yes/no free": 2 * n_scenes,
             "yes/no typed": 2 * n_scenes}
    first = EVAL_SEED + seed_offset
    return dict(engine=engine_dir, scenes=n_scenes, seeds=[first, first + n_scenes - 1],
                accuracy={k: round(hits[k] / tries[k], 4) for k in tries}, questions=tries,
                yes_no_confidence={"right": round(float(np.mean(confidence[True] or [0])), 4),
                                   "wrong": round(float(np.mean(confidence[False] or [0])), 4)})


def _line(hits: Counter, tries: Counter) -> str:
    return ", ".join(f"{k} {hits[k] / tries[k]:.3f}" for k in sorted(tries))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Accuracy of a demo engine on held-out generated scenes.")
    p.add_argument("engine_dir")
    p.add_argument("--scenes", type=int, default=500)
    p.add_argument("--seed-offset", type=int, default=0, help="first scene seed is 10_000_000 + this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", metavar="PATH", help="also write the full result (with failures) as JSON")
    p.add_argument("--typed", action="store_true",
                   help="counting and yes/no in free text against typed answers (integer, bool)")
    a = p.parse_args(argv)
    if a.typed:
        r = typed_accuracy(a.engine_dir, a.scenes, a.seed_offset, a.threads)
        print(f"engine {r['engine']}: {r['scenes']} scenes (seeds {r['seeds'][0]}..{r['seeds'][1]})")
        for k, v in r["accuracy"].items():
            print(f"  {k:15s} {v:.3f}  ({r['questions'][k]} questions)")
        print(f"  typed yes/no mean confidence: right {r['yes_no_confidence']['right']}, "
              f"wrong {r['yes_no_confidence']['wrong']}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(r, f, indent=2)
        return 0
    r = evaluate(a.engine_dir, a.scenes, a.seed_offset, a.threads, log=lambda m: print(m, file=sys.stderr))
    print(f"engine {r['engine']}: {r['scenes']} scenes "
          f"(seeds {r['seeds'][0]}..{r['seeds'][1]}), {r['seconds']}s")
    for k, v in r["accuracy"].items():
        print(f"  {k:10s} {v:.3f}  ({r['questions'][k]} questions)")
    print(f"  grounding mean IoU {r['grounding_mean_iou']}")
    print("  by object count: " + ", ".join(f"{k} {v:.2f}" for k, v in r["by_object_count"].items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
