"""A calibration text the model writes itself (data-free calibration; BENCHMARKS.md 2026-12-05):

    python scripts/sample_calibration_text.py SRC OUT.txt [--sequences 48] [--tokens 256]
    mobilevlm-quality SRC --corpus ... --calibrate OUT.txt --only "int4 GPTQ block 32, sensitive int8"

SRC as mobilevlm-quality takes it (a .gguf, a Llama folder or a MobileVLM checkpoint). Sequences are
sampled from BOS at temperature 1.0, top-p 0.95, torch seed 0, 16 at a time, so the text follows the
model's own distribution rather than one domain's.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--sequences", type=int, default=48)
    p.add_argument("--tokens", type=int, default=256)
    a = p.parse_args(argv)
    from mobilevlm_ros.model.quant.quality import load_language_model

    torch.manual_seed(0)
    lm = load_language_model(a.src)
    texts = []
    for start in range(0, a.sequences, 16):
        n = min(16, a.sequences - start)
        ids = torch.full((n, 1), lm.bos_id if lm.bos_id is not None else 0)
        out = lm.llm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                              top_p=0.95, max_new_tokens=a.tokens, min_new_tokens=a.tokens, pad_token_id=0)
        texts += [lm.decode(row[1:].tolist()) for row in out]
        print(f"{start + n}/{a.sequences} sequences", file=sys.stderr)
    with open(a.out, "w") as f:
        f.write("\n\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
