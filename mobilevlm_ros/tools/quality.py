"""mobilevlm-quality: what each decoder configuration costs in quality, in bytes read per decode token,
and in speed.

  mobilevlm-quality mtgv/MobileVLM_V2-1.7B --corpus /usr/share/common-licenses/GPL-3
  mobilevlm-quality SmolLM2-135M-Instruct.Q4_1.gguf --corpus a.txt b.txt --tokens 8192 --json
  mobilevlm-quality SmolLM2.gguf --corpus a.txt b.txt --shape v2-1.7b --defaults

SRC is a MobileVLM checkpoint (its language model), a Hugging Face Llama folder or hub id, or a
.gguf file. Every decoder is exported as mobilevlm-export builds it and run by the runtime's own
decoder engine; the PyTorch fp32 model is the reference (see mobilevlm_ros/model/quant/quality.py).
--shape NAME adds, beside each row, the bytes read per token and the decode speed of the same
configuration on a synthetic checkpoint of that shape (quality from SRC, bytes and speed at the
size a robot runs).
"""

from __future__ import annotations

import argparse
import json
import sys


def _mb(e: dict, key: str = "read_bytes") -> str:
    if not e.get(key):
        return "-"
    mb = e[key] / 2**20
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.2g}" if mb < 1 else f"{mb:.1f}"


def _table(report: dict) -> str:
    ref = report["reference"]["ppl"]
    shape = {r["name"]: r for r in report.get("shape", {}).get("engines", [])}
    shape_name = report.get("shape", {}).get("name", "")
    head = ["engine", "default", "calibrated on", "perplexity", "vs fp32 reference", "top-1 agreement",
            "MB read per decode token", "decoder MB", "M>1 vs M=1", "decode tok/s"]
    if shape:
        head += [f"MB read per token at {shape_name}", f"decode tok/s at {shape_name}"]
    lines = [f"reference (PyTorch fp32): perplexity {ref:.3f} on {report['reference']['tokens']} tokens", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in report["engines"] + report.get("llamacpp", []):
        if "error" in e:
            lines.append(f"| {e['name']} | | | failed: {e['error']} |" + " |" * (len(head) - 4))
            continue
        agreement = f"{e['agreement']:.3f}" if e.get("agreement") is not None else "-"
        check = e.get("at_once_vs_steps")
        kernels = "-" if not check else f"{check['relative']:.0e}" + ("" if check["same_argmax"] else
                                                                       " ARGMAX DIFFERS")
        row = [e["name"], "yes" if e.get("default") else "", (e.get("calibration") or {}).get("name", ""),
               f"{e['ppl']:.3f}", f"{100 * (e['ppl'] / ref - 1):+.2f}%", agreement, _mb(e), _mb(e, "bytes"),
               kernels, f"{e['decode_tok_s']:.1f}"]
        if shape:
            s = shape.get(e["name"], {})
            row += [_mb(s), f"{s['decode_tok_s']:.1f}" if s.get("decode_tok_s") else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _shape_table(shape: dict) -> str:
    name = shape["name"]
    lines = [f"| engine | MB read per token at {name} | decode tok/s at {name} |", "|---|---|---|"]
    for s in shape["engines"]:
        speed = f"{s['decode_tok_s']:.1f}" if s.get("decode_tok_s") else s.get("error", "-")
        lines.append(f"| {s['name']} | {_mb(s)} | {speed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-quality", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="MobileVLM checkpoint, Llama folder or hub id, or a .gguf file")
    p.add_argument("--corpus", required=True, nargs="+", metavar="TEXT",
                   help="text files of real prose, windows taken from each in turn "
                        "(e.g. /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/MPL-2.0)")
    p.add_argument("--tokens", type=int, default=8192,
                   help="tokens of the corpus to score (default 8192: fewer move configurations by about "
                        "half a percent between runs)")
    p.add_argument("--window", type=int, default=512,
                   help="tokens per window, each read after BOS (default 512)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--only", nargs="*", metavar="NAME",
                   help="score only these configurations (names as printed)")
    p.add_argument("--defaults", action="store_true",
                   help="score only what a plain mobilevlm-export builds: fp32, the int8 and int4 defaults")
    p.add_argument("--calibrate", metavar="TEXT",
                   help="text file that calibrates the GPTQ and AutoClip rows (default: the package's "
                        "calibration prose); refused when it overlaps the corpus")
    p.add_argument("--calibration-tokens", type=int, default=8192, metavar="N",
                   help="at most N tokens of the calibration text, in windows of 256 (default 8192)")
    p.add_argument("--iters", type=int, metavar="N",
                   help="AutoRound rows learn N iterations instead of 200 (the machine's budget; the fast "
                        "row keeps its 0)")
    p.add_argument("--shape", metavar="NAME",
                   help="also measure bytes read per token and decode speed of each configuration on a "
                        "synthetic checkpoint of this shape (e.g. v2-1.7b; minutes per configuration)")
    p.add_argument("--shape-only", action="store_true",
                   help="with --shape: its bytes and decode speed only, nothing scored or calibrated")
    p.add_argument("--llamacpp", action="store_true",
                   help="also convert the same fp32 weights with llama.cpp and score Q8_0, Q4_0, Q4_K_M "
                        "(needs llama-cpp-python and llama.cpp's converter, see --llamacpp-src)")
    p.add_argument("--llamacpp-src", help="llama.cpp source folder with convert_hf_to_gguf.py "
                                          "(e.g. llama-cpp-python's sdist, vendor/llama.cpp)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)

    from ..model.export import is_calibrated
    from ..model.quant.calibration import text_calibration
    from ..model.quant.quality import CONFIGS, load_language_model, measure, with_iters
    from ..runtime.errors import VLMError

    log = (lambda s: print(s, file=sys.stderr)) if a.json else print
    configs = [c for c in CONFIGS if (not a.only or c.name in a.only) and (not a.defaults or c.is_default)]
    if a.only and len(configs) != len(a.only):
        p.error(f"--only: known configurations are {', '.join(c.name for c in CONFIGS)}")
    if a.iters is not None:
        learns = [c.quant.get("algo_config") == "autoround" and "iters" not in c.quant for c in configs]
        configs = [with_iters(c, a.iters) if n else c for c, n in zip(configs, learns)]  # fast keeps its 0
    if a.shape:
        from ..model.synthetic import PRESETS

        if a.shape not in PRESETS:
            p.error(f"--shape: known shapes are {', '.join(PRESETS)}")
    if a.shape_only and not a.shape:
        p.error("--shape-only needs --shape")
    if a.shape_only:
        report = {"shape": _shape(a, configs, log)}
        print(json.dumps(report, indent=2) if a.json else "\n" + _shape_table(report["shape"]))
        return 0
    try:
        texts = []
        for path in a.corpus:
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
        source = _calibration_source(a, texts) if any(is_calibrated(c.quant) for c in configs) else None
        lm = load_language_model(a.src)
        calibration = None
        if source is not None:
            # 8k tokens by default: half the exporter's set; text-only GPTQ of a small Llama settles well
            # before (BENCHMARKS.md).
            calibration = text_calibration(lm.encode, lm.bos_id, source,
                                           count=max(1, a.calibration_tokens // 256))
            log(f"calibration set {source.name}: {calibration.record['samples']} samples, "
                f"{calibration.record['tokens']} tokens")
        report = measure(lm, texts, tokens=a.tokens, window=a.window, configs=configs, threads=a.threads,
                         log=log, calibration=calibration)
        windows, choices = report.pop("windows"), report.pop("reference_choices")
        if a.llamacpp:
            from ..model.quant.llamacpp_quality import measure_llamacpp

            report["llamacpp"] = measure_llamacpp(lm, windows, choices, a.llamacpp_src, threads=a.threads,
                                                  log=log)
        if a.shape:
            report["shape"] = _shape(a, configs, log)
    except (VLMError, ValueError, OSError) as e:
        print(f"mobilevlm-quality: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if a.json else "\n" + _table(report))
    return 0


def _calibration_source(a, texts):
    """The calibrated rows' text, from --calibrate or the default source; never one that
    overlaps the evaluation corpus."""
    from ..model.quant.calibration import default_source, overlap, text_source

    source = text_source(a.calibrate) if a.calibrate else default_source(scenes=0)
    for path, text in zip(a.corpus, texts):
        shared = overlap(source.text, text)
        if shared > MAX_OVERLAP:
            raise ValueError(f"--calibrate {source.name}: {100 * shared:.0f}% of its 8-word sequences are in "
                             f"the evaluation text {path}; calibrate on a text that is not evaluated")
    return source


# Share of 8-word sequences: unrelated licence texts share up to 2% (legal phrases), GFDL-1.3 7% of
# GPL-3 (the FSF's boilerplate), GPL-2 28%, a text evaluated on itself 100%.
MAX_OVERLAP = 0.05


def _shape(a, configs, log) -> dict:
    """Bytes read per token and decode speed of each configuration on a synthetic checkpoint of a's shape."""
    import tempfile

    from ..model.quant.quality import load_language_model, measure_shape
    from ..model.synthetic import write_synthetic

    with tempfile.TemporaryDirectory(prefix="mobilevlm_shape_ckpt_") as ckpt:
        write_synthetic(a.shape, ckpt)
        lm = load_language_model(ckpt)
        rows = measure_shape(lm, configs, threads=a.threads, log=log)
        out = {"name": a.shape, "engines": rows}
        if a.llamacpp:
            from ..model.quant.llamacpp_quality import measure_llamacpp_shape

            out["engines"] += measure_llamacpp_shape(lm, a.llamacpp_src, threads=a.threads, log=log)
    return out


if __name__ == "__main__":
    sys.exit(main())
