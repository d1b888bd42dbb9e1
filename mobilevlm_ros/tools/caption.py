"""mobilevlm-caption: caption an image, or answer a question about it, with an engine directory.

  mobilevlm-caption engines/demo scene.png
  mobilevlm-caption engines/demo scene.png --question "How many objects are there?" --json
"""

from __future__ import annotations

import argparse
import json
import sys

from ..runtime.sessions import BACKENDS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-caption", description=__doc__.split("\n\n")[0])
    p.add_argument("engine", help="engine directory (with manifest.json)")
    p.add_argument("image", help="image file (PNG, JPEG, ...)")
    p.add_argument("--question", "-q", default=None, help="question (default: a caption request)")
    p.add_argument("--ground", metavar="PHRASE", help="ask for the box of the region PHRASE describes")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--json", action="store_true", help="print text, boxes in pixels and timings as JSON")
    a = p.parse_args(argv)

    from ..runtime.errors import VLMError
    from ..runtime.generation import GenerationParams
    from ..runtime.grounding import grounding_prompt
    from ..runtime.image import load_image
    from ..runtime.vlm import VLM

    try:
        params = GenerationParams(max_new_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p,
                                  seed=a.seed).validate()
        rgb = load_image(a.image)
        vlm = VLM(a.engine, backend=a.backend, threads=a.threads)
        question = grounding_prompt(a.ground) if a.ground else a.question
        shown = ""

        def show(text: str, tokens: int) -> None:  # the answer as it grows: print what is new
            nonlocal shown
            print(text[len(shown):], end="", flush=True)
            shown = text

        answer = vlm.describe(rgb, question, params, on_text=None if a.json else show,
                              phrase=(a.ground or "").strip())
        if a.json:
            print(json.dumps({"model": vlm.model_id, "backend": vlm.backend, **answer.to_dict()}, indent=2))
        else:
            print()  # the last call of show() had the whole answer
            for b in answer.boxes:
                print(f"box {b.phrase or '-'}: [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}] px")
    except (VLMError, ValueError) as e:
        print(f"mobilevlm-caption: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
