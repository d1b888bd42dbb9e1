"""Driver of `make test-arm` (scripts/test_arm.sh): the runtime's ARM CPU path against x86.

    python scripts/arm_check.py record  CHECK_DIR   # x86 venv (torch): images, tiny engines, x86 answers
    python scripts/arm_check.py tests   CHECK_DIR   # arm64 under emulation: the runtime tests
    python scripts/arm_check.py compare CHECK_DIR   # arm64 under emulation: mobilevlm-caption vs x86

`record` writes a few fixed scenes (PNG), exports the "tiny" synthetic model at fp32, int8 and
int4 (block 32, as test/conftest.py does; redone only when mobilevlm_ros/model changed) and runs
`python -m mobilevlm_ros.tools.caption --json` for every engine (those three and the committed
engines/demo) on every case, keeping text, token ids and boxes in x86_answers.json.

`compare` runs the same commands on arm64 and checks:
- fp32 engines (demo, tiny-fp32): the same token ids as x86, token for token;
- int8 / int4: agreement with the ARM fp32 answers within test_parity's floors: the share of
  positions where the quantized engine's greedy token equals fp32's, teacher-forced along the
  fp32 answer (a flip does not cascade), averaged over the cases;
then reports which onnxruntime kernels ran, on which execution provider (session profiles).

`tests` runs every test file whose module-level imports exist on the ARM image (the others are
listed with the module they need), through pytest with scripts/arm_pytest_plugin.py in place of
test/conftest.py. To export the tiny engines again, remove CHECK_DIR/engines.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import glob
import hashlib
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_ENGINE = os.path.join(REPO, "engines", "demo")
PRECISIONS = ("fp32", "int8", "int4")
# test/test_parity.py::test_quantized_engines_agree_with_fp32: teacher-forced greedy agreement floors.
FLOORS = {"int8": 0.75, "int4": 0.5}
# Tests that hold for the ARM code but not for its speed under emulation (10-50x slower than native).
DESELECT = {
    "test/test_tokenizer.py::test_full_size_training_is_fast":
        "a wall-clock bound (< 5 s) on tokenizer training",
}
# On qemu's `max` CPU only: its MIDR names no vendor (implementer 0, "reserved for software"), so
# onnxruntime prints "cpuid_info warning: Unknown CPU vendor" on stderr, a line more than expected.
DESELECT_ON_CPU = {
    "max": {"test/test_engine_errors.py::test_caption_cli_errors_are_one_line":
            "onnxruntime's 'Unknown CPU vendor' warning on stderr (qemu's max CPU has no vendor)"},
}
# Tests that pass under emulation but take too long there; run with ARM_SLOW=1.
SLOW = {
    "test/test_demo_model.py::test_demo_engine_accuracy_floor":
        "about 200 answers of the demo engine, 7 min emulated (compare checks its answers against x86)",
}


def engine_dirs(check: str) -> Dict[str, str]:
    out = {"demo": DEMO_ENGINE}
    out.update({f"tiny-{p}": os.path.join(check, "engines", f"tiny-{p}") for p in PRECISIONS})
    return out


def run_caption(engine: str, image: str, args: List[str]) -> dict:
    """`python -m mobilevlm_ros.tools.caption ENGINE IMAGE ARGS --json` with this interpreter."""
    cmd = [sys.executable, "-m", "mobilevlm_ros.tools.caption", engine, image, *args,
           "--backend", "cpu", "--threads", "1", "--json"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": f"exit {r.returncode}: {r.stderr.strip()[-500:]}"}
    try:
        out = json.loads(r.stdout[r.stdout.index("{"):])
        return {k: out[k] for k in ("text", "token_ids", "boxes", "finish_reason")}
    except (ValueError, KeyError) as e:
        return {"error": f"unexpected output ({e}): {r.stdout.strip()[-300:]}"}


def sha256_of(paths: List[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


# -- x86 -----------------------------------------------------------------------------------------

def make_cases(check: str) -> List[dict]:
    """Two scenes of the demo world (held-out seeds): a caption, a count and a grounding question."""
    from PIL import Image

    from mobilevlm_ros.demo import scenes as S
    from mobilevlm_ros.runtime.grounding import grounding_prompt
    from mobilevlm_ros.runtime.prompt import DEFAULT_CAPTION_QUESTION

    os.makedirs(os.path.join(check, "images"), exist_ok=True)
    one = S.sample_scene(10_000_000)
    many = next(s for s in map(S.sample_scene, range(10_000_001, 10_000_100))
                if len(s.objects) >= 3 and any(S.referring_phrase(s, o) for o in s.objects))
    phrase = next(S.referring_phrase(many, o) for o in many.objects if S.referring_phrase(many, o))
    images = {}
    for name, scene in (("scene1", one), ("scene2", many)):
        images[name] = os.path.join(check, "images", f"{name}.png")
        Image.fromarray(scene.image).save(images[name])
    count = "How many objects are there?"
    return [
        dict(id="scene1 caption", image=images["scene1"], args=[], question=DEFAULT_CAPTION_QUESTION),
        dict(id="scene2 count", image=images["scene2"], args=["--question", count], question=count),
        dict(id=f"scene2 ground '{phrase}'", image=images["scene2"], args=["--ground", phrase],
             question=grounding_prompt(phrase)),
    ]


def export_tiny(check: str) -> None:
    """The tiny synthetic model at fp32/int8/int4, as test/conftest.py exports it; kept while
    mobilevlm_ros/model/*.py is unchanged."""
    folder = os.path.join(check, "engines")
    stamp = os.path.join(folder, "stamp")
    want = sha256_of(glob.glob(os.path.join(REPO, "mobilevlm_ros", "model", "*.py")))
    have = open(stamp).read() if os.path.isfile(stamp) else ""
    if have == want and all(os.path.isfile(os.path.join(d, "manifest.json"))
                            for n, d in engine_dirs(check).items() if n != "demo"):
        print("tiny engines: up to date")
        return
    import shutil

    from mobilevlm_ros.model.export import export
    from mobilevlm_ros.model.synthetic import write_synthetic

    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.time()
    ckpt = write_synthetic("tiny", os.path.join(folder, "checkpoint"))
    for p in PRECISIONS:
        export(ckpt, os.path.join(folder, f"tiny-{p}"), p, "cpu", model_id="synthetic/tiny", block_size=32,
               log=lambda s: None)
    with open(stamp, "w") as f:
        f.write(want)
    print(f"tiny engines: exported fp32, int8, int4 in {time.time() - t0:.0f} s")


def graph_facts(engine: str) -> dict:
    """Op types of each graph, and the MatMulNBits settings (onnx is on the x86 side only)."""
    import onnx

    from mobilevlm_ros.runtime import manifest as mf

    m = mf.load(engine)
    facts = {}
    for role in ("vision", "decoder"):
        g = onnx.load(m.path(role), load_external_data=False).graph
        nbits = sorted({", ".join(f"{a.name}={a.i}" for a in n.attribute if a.name in ("bits", "block_size",
                                                                                       "accuracy_level"))
                        for n in g.node if n.op_type == "MatMulNBits"})
        facts[role] = {"ops": dict(Counter(n.op_type for n in g.node)), "MatMulNBits": nbits}
    return facts


def record(check: str) -> int:
    import onnxruntime as ort

    os.makedirs(check, exist_ok=True)
    export_tiny(check)
    cases = make_cases(check)
    t0 = time.time()
    answers, facts = {}, {}
    for name, engine in engine_dirs(check).items():
        limit = ["--max-tokens", "48" if name == "demo" else "24"]
        answers[name] = [run_caption(engine, c["image"], c["args"] + limit) for c in cases]
        facts[name] = graph_facts(engine)
        bad = [a["error"] for a in answers[name] if "error" in a]
        if bad:
            print(f"x86 {name}: mobilevlm-caption failed: {bad[0]}")
            return 1
    agreement = {p: quantized_agreement(engine_dirs(check)[f"tiny-{p}"], cases, answers["tiny-fp32"])
                 for p in FLOORS}
    with open(os.path.join(check, "x86_answers.json"), "w") as f:
        json.dump({"machine": platform.machine(), "onnxruntime": ort.__version__, "cases": cases,
                   "answers": answers, "agreement": agreement, "graphs": facts}, f, indent=1)
    print(f"x86 answers: {len(engine_dirs(check))} engines x {len(cases)} cases in {time.time() - t0:.0f} s "
          f"(onnxruntime {ort.__version__}, {platform.machine()})")
    return 0


# -- arm64: tests --------------------------------------------------------------------------------

def unavailable_import(path: str) -> str:
    """The first module-level import of a test file (pytest.importorskip included) whose module is
    not on this image, as "module (needs X)"; "" when all import. A module of mobilevlm_ros that
    fails for a missing dependency counts only outside the runtime (mobilevlm_ros.model needs torch)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names = [node.module]
        elif (isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Call)
              and getattr(node.value.func, "attr", "") == "importorskip" and node.value.args
              and isinstance(node.value.args[0], ast.Constant)):
            names = [node.value.args[0].value]
        else:
            continue
        for name in names:
            if name == "conftest" or name.startswith(("mobilevlm_ros.runtime",
                                                      "mobilevlm_ros.tools.caption")):
                continue  # the runtime itself: if it does not import here, that is a failure to see
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] != "mobilevlm_ros":
                    return f"{name} (needs {e.name})" if e.name != name else name
    return ""


def tests(check: str) -> int:
    import pytest

    print(f"python {platform.python_version()} on {platform.machine()} "
          f"(CPU {os.environ.get('ARM_CPU', '?')})")
    files = sorted(glob.glob(os.path.join(REPO, "test", "test_*.py")))
    not_here = {os.path.basename(f): unavailable_import(f) for f in files}
    not_here = {f: why for f, why in not_here.items() if why}
    for f, why in not_here.items():
        print(f"not run on arm64: test/{f}: imports {why}")
    deselect = {**DESELECT, **DESELECT_ON_CPU.get(os.environ.get("ARM_CPU", ""), {}),
                **({} if os.environ.get("ARM_SLOW") == "1" else SLOW)}
    for t, why in deselect.items():
        print(f"not run on arm64: {t}: {why}")
    os.environ["MOBILEVLM_ARM_ENGINES"] = os.path.join(check, "engines")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import arm_pytest_plugin

    args = ["-q", "-rs", "--noconftest", "-p", "no:cacheprovider", f"--rootdir={REPO}",
            f"--basetemp={os.path.join(check, 'pytest-tmp')}", "--durations=5"]
    args += [a for t in deselect for a in ("--deselect", t)]
    args += [f for f in files if os.path.basename(f) not in not_here]
    os.chdir(REPO)
    t0 = time.time()
    rc = int(pytest.main(args, plugins=[arm_pytest_plugin]))
    print(f"runtime tests on arm64: {'passed' if rc == 0 else f'FAILED (pytest exit {rc})'} "
          f"in {time.time() - t0:.0f} s")
    return rc


# -- arm64: answers vs x86 -----------------------------------------------------------------------

def quantized_agreement(engine: str, cases: List[dict], fp32_answers: List[dict]) -> List[float]:
    """VLM.agreement of `engine` along each fp32 answer (per case)."""
    from mobilevlm_ros.runtime.image import load_image
    from mobilevlm_ros.runtime.vlm import VLM

    vlm = VLM(engine, backend="cpu", threads=1)
    return [vlm.agreement(load_image(c["image"]), c["question"], a["token_ids"])
            for c, a in zip(cases, fp32_answers) if a.get("token_ids")]


def kernels_run(engine: str, rgb, question: str, folder: str) -> Dict[str, Counter]:
    """{graph: Counter of (op type, execution provider) over the kernel runs of one answer}."""
    from mobilevlm_ros.runtime.generation import GenerationParams
    from mobilevlm_ros.runtime.vlm import VLM

    os.makedirs(folder, exist_ok=True)
    vlm = VLM(engine, backend="cpu", threads=1, profile_prefix=os.path.join(folder, "profile_"))
    vlm.describe(rgb, question, GenerationParams(max_new_tokens=8))
    out = {}
    for graph, part in (("vision", vlm.vision), ("decoder", vlm.decoder)):
        with open(part.session.end_profiling()) as f:
            events = json.load(f)
        out[graph] = Counter((e["args"]["op_name"], e["args"].get("provider", "?")) for e in events
                             if e.get("cat") == "Node" and "op_name" in e.get("args", {}))
    return out


def cpu_features() -> str:
    """The arm64 feature bits the (emulated) CPU reports, those onnxruntime's MLAS kernels pick by."""
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    hwcap, hwcap2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
    bits = [(hwcap, 1, "asimd"), (hwcap, 10, "asimdhp"), (hwcap, 20, "asimddp"), (hwcap, 22, "sve"),
            (hwcap2, 1, "sve2"), (hwcap2, 13, "i8mm"), (hwcap2, 14, "bf16"), (hwcap2, 23, "sme")]
    return " ".join(name + ("+" if word >> bit & 1 else "-") for word, bit, name in bits)


def compare(check: str) -> int:
    import numpy as np
    import onnxruntime as ort

    from mobilevlm_ros.runtime.image import load_image

    with open(os.path.join(check, "x86_answers.json")) as f:
        x86 = json.load(f)
    cases, engines = x86["cases"], engine_dirs(check)
    versions = "the same as" if ort.__version__ == x86["onnxruntime"] else "NOT the same as"
    print(f"{platform.machine()} (CPU {os.environ.get('ARM_CPU', '?')}), python {platform.python_version()}, "
          f"onnxruntime {ort.__version__}: {versions} x86's ({x86['onnxruntime']})")
    t0 = time.time()
    arm = {}
    for name, engine in engines.items():
        limit = ["--max-tokens", "48" if name == "demo" else "24"]
        arm[name] = [run_caption(engine, c["image"], c["args"] + limit) for c in cases]
    with open(os.path.join(check, "arm_answers.json"), "w") as f:
        json.dump({"onnxruntime": ort.__version__, "answers": arm}, f, indent=1)
    print(f"mobilevlm-caption: {len(engines)} engines x {len(cases)} cases in {time.time() - t0:.0f} s\n")

    failures = []
    print("ARM answers vs x86: fp32 engines must be the same token for token; int8/int4 differences are\n"
          "informative (other int8 kernels), those engines are judged against ARM fp32 below.")
    print(f"{'engine':10} {'case':32} {'tokens':>6}  result")
    for name in engines:
        for c, a, ref in zip(cases, arm[name], x86["answers"][name]):
            if "error" in a:
                failures.append(f"{name} {c['id']}: {a['error']}")
                print(f"{name:10} {c['id']:32} {'-':>6}  ERROR {a['error'][:200]}")
                continue
            same = a["token_ids"] == ref["token_ids"]
            first = next((i for i, (p, q) in enumerate(zip(a["token_ids"], ref["token_ids"])) if p != q),
                         min(len(a["token_ids"]), len(ref["token_ids"])))
            verdict = "same as x86" if same else f"differs from x86 at token {first}"
            if not same and not name.endswith(("int8", "int4")):
                failures.append(f"{name} {c['id']}: ARM {a['token_ids']} vs x86 {ref['token_ids']}")
                verdict = "MISMATCH: " + verdict
            boxes = "".join(f" box [{b['x1']:.0f}, {b['y1']:.0f}, {b['x2']:.0f}, {b['y2']:.0f}]"
                            for b in a["boxes"])
            print(f"{name:10} {c['id']:32} {len(a['token_ids']):6}  {verdict}: {a['text'][:60]!r}{boxes}")

    print("\nint8/int4 vs ARM fp32 (teacher-forced greedy agreement along the ARM fp32 answers, "
          "floors of test_parity):")
    for p, floor in FLOORS.items():
        rates = quantized_agreement(engines[f"tiny-{p}"], cases, arm["tiny-fp32"])
        rate = float(np.mean(rates)) if rates else 0.0
        ok = bool(rates) and rate >= floor
        print(f"  tiny-{p}: {rate:.2f} (per case {', '.join(f'{r:.2f}' for r in rates)}; floor {floor}) "
              f"{'ok' if ok else 'BELOW THE FLOOR'}; on x86: {np.mean(x86['agreement'][p]):.2f}")
        if not ok:
            failures.append(f"tiny-{p}: agreement {rate:.2f} < {floor}")

    print(f"\nonnxruntime {ort.__version__} on arm64: providers {ort.get_available_providers()}, "
          f"device {ort.get_device()}")
    print(f"CPU features (HWCAP, qemu's emulated CPU): {cpu_features()}")
    print("kernels run for one answer (op type x runs, execution provider), from session profiles:")
    c0 = cases[0]
    for name, engine in engines.items():
        ran = kernels_run(engine, load_image(c0["image"]), c0["question"],
                          os.path.join(check, "profiles", name))
        for graph, counts in ran.items():
            ops = Counter()
            for (op, provider), n in counts.items():
                ops[f"{op}[{provider.replace('ExecutionProvider', '')}]"] += n
            nbits = x86["graphs"][name][graph]["MatMulNBits"]
            print(f"  {name:9} {graph:7} " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))
                  + (f"  (MatMulNBits {'; '.join(nbits)})" if nbits else ""))
            not_cpu = {p for _, p in counts if p != "CPUExecutionProvider"}
            if not_cpu:
                failures.append(f"{name} {graph}: kernels on {not_cpu}, expected the CPU EP only")

    print()
    for f in failures:
        print(f"FAILED: {f}")
    print(f"compare on arm64: {'PASSED' if not failures else f'FAILED ({len(failures)})'}")
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["record", "tests", "compare"])
    p.add_argument("check", help="folder of images, engines and answers (build/arm/check)")
    a = p.parse_args(argv)
    check = os.path.abspath(a.check)
    if a.step != "record" and platform.machine() != "aarch64":
        print(f"arm_check.py {a.step}: runs on arm64 (here {platform.machine()}); see scripts/test_arm.sh")
        return 2
    return {"record": record, "tests": tests, "compare": compare}[a.step](check)


if __name__ == "__main__":
    sys.exit(main())
