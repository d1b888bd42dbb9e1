"""mobilevlm-quality: what each decoder precision and int4 configuration costs on real weights.

  mobilevlm-quality mtgv/MobileVLM_V2-1.7B --corpus /usr/share/common-licenses/GPL-3
  mobilevlm-quality SmolLM2-135M-Instruct.Q4_1.gguf --corpus text.txt --tokens 1024 --json

SRC is a MobileVLM checkpoint (its language model), a Hugging Face Llama folder or hub id, or a
.gguf file. Every decoder is exported as mobilevlm-export builds it and run by the runtime's own
decoder engine; the PyTorch fp32 model is the reference (see mobilevlm_ros/model/quality.py).
"""

from __future__ import annotations

import argparse
import json
import sys


def _table(report: dict) -> str:
    ref = report["reference"]["ppl"]
    lines = [f"reference (PyTorch fp32): perplexity {ref:.3f} on {report['reference']['tokens']} tokens", "",
             "| engine | default | perplexity | vs fp32 reference | top-1 agreement | decoder MB "
             "| decode tok/s |",
             "|---|---|---|---|---|---|---|"]
    for e in report["engines"] + report.get("llamacpp", []):
        if "error" in e:
            lines.append(f"| {e['name']} | | failed: {e['error']} | | | | |")
            continue
        agreement = f"{e['agreement']:.3f}" if e.get("agreement") is not None else "-"
        lines.append(f"| {e['name']} | {'yes' if e.get('default') else ''} | {e['ppl']:.3f} | "
                     f"{100 * (e['ppl'] / ref - 1):+.2f}% | {agreement} | {e['bytes'] / 2**20:.1f} | "
                     f"{e['decode_tok_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-quality", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="MobileVLM checkpoint, Llama folder or hub id, or a .gguf file")
    p.add_argument("--corpus", required=True,
                   help="a text file of real prose (e.g. /usr/share/common-licenses/GPL-3)")
    p.add_argument("--tokens", type=int, default=1024, help="tokens of the corpus to score (default 1024)")
    p.add_argument("--window", type=int, default=512,
                   help="tokens per window, each read after BOS (default 512)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--only", nargs="*", metavar="NAME",
                   help="score only these configurations (names as printed)")
    p.add_argument("--llamacpp", action="store_true",
                   help="also convert the same fp32 weights with llama.cpp and score Q8_0, Q4_0, Q4_K_M "
                        "(needs llama-cpp-python and llama.cpp's converter, see --llamacpp-src)")
    p.add_argument("--llamacpp-src", help="llama.cpp source folder with convert_hf_to_gguf.py "
                                          "(e.g. llama-cpp-python's sdist, vendor/llama.cpp)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)

    from ..model.quality import CONFIGS, load_language_model, measure
    from ..runtime.errors import VLMError

    log = (lambda s: print(s, file=sys.stderr)) if a.json else print
    configs = [c for c in CONFIGS if not a.only or c.name in a.only]
    if a.only and len(configs) != len(a.only):
        p.error(f"--only: known configurations are {', '.join(c.name for c in CONFIGS)}")
    try:
        with open(a.corpus, encoding="utf-8", errors="replace") as f:
            text = f.read()
        lm = load_language_model(a.src)
        report = measure(lm, text, tokens=a.tokens, window=a.window, configs=configs, threads=a.threads,
                         log=log)
        windows, choices = report.pop("windows"), report.pop("reference_choices")
        if a.llamacpp:
            from ..model.llamacpp_quality import measure_llamacpp

            report["llamacpp"] = measure_llamacpp(lm, windows, choices, a.llamacpp_src, threads=a.threads,
                                                  log=log)
    except (VLMError, ValueError, OSError) as e:
        print(f"mobilevlm-quality: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if a.json else "\n" + _table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
