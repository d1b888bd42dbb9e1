"""mobilevlm-bench --typed: what typed answers cost, next to the decode step they ride on (same run).

  mobilevlm-bench --typed [ENGINE_DIR | --synthetic v2-1.7b] [--answers 20]

For each answer type it decodes `--answers` typed answers about generated scenes and reports, per
generated token: the grammar's time (mask before the sampler, consuming the token, computing forced
tokens) against the decoder step's, measured in the same answers; and the tokens jump-forward fed
without a step of their own. It also times a yes/no question typed against the same question in free
text. Prints a table; `--json` writes the figures.
"""

from __future__ import annotations

import statistics
import time
from typing import Dict, List

import numpy as np

JSON_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["open", "count", "what"],
               "properties": {"open": {"type": "boolean"},
                              "count": {"type": "integer", "minimum": 0, "maximum": 9},
                              "what": {"enum": ["cup", "door", "person"]}}}


class TimedConstraint:
    """A constraint whose every call is timed (the grammar's share of a token)."""

    def __init__(self, inner):
        self.inner, self.seconds, self.masks = inner, 0.0, 0

    def _timed(self, name, *args):
        t0 = time.perf_counter()
        out = getattr(self.inner, name)(*args)
        self.seconds += time.perf_counter() - t0
        return out

    def mask(self, logits):
        self.masks += 1
        return self._timed("mask", logits)

    def consume(self, token):
        return self._timed("consume", token)

    def forced(self, limit):
        return self._timed("forced", limit)

    def is_complete(self):
        return self._timed("is_complete")

    def is_accepting(self):
        return self.inner.is_accepting()


def _types():
    from ...runtime.answer_types import AnswerType

    return {"bool": ("Is there a red circle?", AnswerType("bool")),
            "integer 0..4": ("How many objects are there?", AnswerType("integer", minimum=0, maximum=4)),
            "integer": ("How many objects are there?", AnswerType("integer")),
            "number 0..1": ("How large is it?", AnswerType("number", minimum=0.0, maximum=1.0)),
            "boxes": ("Please provide the bounding box coordinate of the region this sentence describes: "
                      "the red circle.", AnswerType("boxes")),
            "json": ("Describe the scene.", AnswerType("json", schema=JSON_SCHEMA))}


def measure(engine: str, answers: int, threads: int) -> Dict:
    from ...demo import scenes
    from ...runtime.generation import GenerationParams
    from ...runtime.vlm import VLM

    vlm = VLM(engine, backend="cpu", threads=threads)
    params = GenerationParams(max_new_tokens=96)
    images = [scenes.make_scene(50_000_000 + i, 320, 240).image for i in range(answers)]
    rows = {}
    for name, (question, answer_type) in _types().items():
        grammar_s = decode_s = 0.0
        tokens = forced = steps = 0
        for rgb in images:
            generator = vlm.generator(rgb, question, params, answer_type=answer_type)
            generator.constraint = TimedConstraint(generator.constraint)
            while not generator.is_done():
                token = generator.next_token()
                if token is None:
                    break
                t0 = time.perf_counter()
                logits = vlm.decoder.run(vlm.table[[token] + generator.forced], generator.row)
                decode_s += time.perf_counter() - t0
                steps += 1
                generator.feed(logits, 0.0)
            grammar_s += generator.constraint.seconds
            tokens += len(generator.token_ids)
            forced += generator.timings.forced_tokens
        rows[name] = {"answers": answers, "tokens": tokens, "forced_tokens": forced, "decoder_steps": steps,
                      "grammar_ms_per_token": 1e3 * grammar_s / max(tokens, 1),
                      "decode_ms_per_step": 1e3 * decode_s / max(steps, 1),
                      "grammar_share_of_step": grammar_s / max(tokens, 1) / (decode_s / max(steps, 1))
                      if steps else 0.0}
    result = {"engine": engine, "vocab": vlm.tokenizer.vocab_size, "threads": threads, "types": rows}
    result["yes_no_latency"] = _yes_no_latency(vlm, images, params)
    return result


def _yes_no_latency(vlm, images: List[np.ndarray], params) -> Dict:
    """The same yes/no question, free text and typed, on each image once its vision and image prefill
    are cached (the same for both): seconds per answer, and tokens."""
    from ...runtime.answer_types import AnswerType

    question = "Is there a red circle?"
    free, typed, free_tokens = [], [], []
    for rgb in images:
        vlm.describe(rgb, question, params)  # vision and the image's prefill, cached for both below
        t0 = time.perf_counter()
        answer = vlm.describe(rgb, question, params)
        free.append(time.perf_counter() - t0)
        free_tokens.append(len(answer.token_ids))
        t0 = time.perf_counter()
        vlm.describe(rgb, question, params, answer_type=AnswerType("bool"))
        typed.append(time.perf_counter() - t0)
    return {"free_text_s": statistics.median(free), "typed_s": statistics.median(typed),
            "free_text_tokens": statistics.median(free_tokens)}


def table(r: Dict) -> str:
    lines = [f"engine {r['engine']} (vocabulary {r['vocab']}, {r['threads']} threads)",
             "| type | tokens | forced (jump-forward) | decoder steps | grammar ms/token | decode ms/step "
             "| grammar / step |", "|---|---|---|---|---|---|---|"]
    for name, t in r["types"].items():
        lines.append(f"| {name} | {t['tokens']} | {t['forced_tokens']} | {t['decoder_steps']} | "
                     f"{t['grammar_ms_per_token']:.3f} | {t['decode_ms_per_step']:.2f} | "
                     f"{100 * t['grammar_share_of_step']:.2f}% |")
    if "yes_no_latency" in r:
        y = r["yes_no_latency"]
        lines.append(f"yes/no question, median per answer (image cached): free text "
                     f"{1e3 * y['free_text_s']:.1f} ms ({y['free_text_tokens']:g} tokens), "
                     f"typed bool {1e3 * y['typed_s']:.1f} ms")
    return "\n".join(lines)


def main(a) -> int:
    """Called by mobilevlm-bench --typed with its parsed arguments (engine resolved by the caller)."""
    import json
    import sys

    from ...runtime.sessions import default_threads

    result = measure(a.engine, a.answers, a.threads or default_threads())
    print(table(result))
    if a.json:
        with (sys.stdout if a.json == "-" else open(a.json, "w")) as f:
            json.dump(result, f, indent=2)
    return 0
