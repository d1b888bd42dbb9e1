"""mobilevlm-bench (engine mode) end to end on the tiny model, and its refusal of a missing GPU."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from mobilevlm_ros.tools.bench import cli as bench

# --synthetic exports its engines and --kernels builds graphs with onnx: the export side, which the
# robot-only ARM image (make test-arm) lacks.
pytest.importorskip("torch", reason="mobilevlm-bench --synthetic exports engines: needs torch (export side)")
pytest.importorskip("onnx", reason="mobilevlm-bench --kernels builds its graphs with onnx (export side)")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One synthetic tiny checkpoint and engine for the module (the bench caches them here)."""
    return str(tmp_path_factory.mktemp("bench-work"))


def test_bench_measures_ours_and_the_reference(work, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--synthetic", "tiny", "--runs", "1", "--new-tokens", "4", "--threads", "1",
                       "--work", work, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ours, ref = result["ours"], result["reference"]
    assert (ours["backend"], ours["precision"], ref["backend"]) == ("cpu", "int4", "torch-cpu")
    for row in (ours, ref):
        assert row["new_tokens"] == 4 and row["prompt_tokens"] == ours["prompt_tokens"]
        assert row["vision_ms"] > 0 and row["decode_tok_s"] > 0 and row["e2e_s"] > 0
    # the cached system-prompt head is not computed again per frame
    assert ours["prefill_tokens"] < ours["prompt_tokens"]
    assert 0 < ours["decode_fraction_of_bound"] and ours["read_bandwidth_gbs"] > 0
    assert result["e2e_speedup_vs_reference"] == pytest.approx(ref["e2e_s"] / ours["e2e_s"])
    assert "faster than PyTorch fp32 (torch-cpu)" in capsys.readouterr().out


HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime offers CUDA here: nothing to refuse")
def test_bench_refuses_a_gpu_backend_before_exporting(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--synthetic", "tiny", "--backend", "cuda", "--work", str(tmp_path)])
    assert e.value.code == 2
    assert "backend 'cuda' requested but onnxruntime offers only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "it exported before refusing"


def test_profile_splits_one_caption_into_its_stages(work, tmp_path, capsys):
    """The decoder's runs of the measured caption are found: one prefill, new_tokens - 1 steps."""
    out = tmp_path / "profile.json"
    assert bench.main(["--synthetic", "tiny", "--profile", "--new-tokens", "5", "--threads", "1",
                       "--work", work, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert (stages["vision"]["runs"], stages["prefill"]["runs"], stages["decode"]["runs"]) == (1, 1, 4)
    # the int4 default: int4 matrices, and int8 for lm_head and the most sensitive ones
    assert {"MatMulNBits int4", "MatMulNBits int8"} <= set(stages["decode"]["ops_ms"])
    assert "GroupQueryAttention" in stages["prefill"]["ops_ms"]
    assert not any(op.startswith("MatMulNBits") for op in stages["vision"]["ops_ms"])  # kept apart
    for s in stages.values():
        assert 0 < sum(s["ops_ms"].values()) <= s["wall_ms"]
    assert 0 < sum(s["wall_ms"] for s in stages.values()) < result["caption_ms"]
    assert result["outside_sessions_ms"] > 0
    printed = capsys.readouterr().out
    assert "one caption:" in printed and "decode" in printed and "ms per step" in printed


def test_kernels_compute_the_product_in_every_form():
    from mobilevlm_ros.tools.bench.kernels import FORMS, measure

    results = measure(k=256, n=96, rows=(8, 1), threads=1, seconds=0.01)
    assert {(r["form"], r["rows"]) for r in results} == {(f, m) for f in FORMS for m in (8, 1)}
    error = {(r["form"], r["rows"]): r["error"] for r in results}
    assert error[("fp32", 8)] < 1e-5
    for m in (8, 1):
        # int8 weights with per-block activations beat int4; every form stays a usable product
        assert error[("MatMulNBits int8", m)] < error[("MatMulNBits int4", m)] < 0.2
        assert error[("QGEMM int8", m)] < 0.2
    assert all(r["ms"] > 0 and r["gops"] > 0 for r in results)


def test_benchmark_tools_share_helpers_through_common_only():
    """No circle: a bench module imports no private name of another, and none but cli.py imports
    another bench module other than common.py."""
    import ast
    import pathlib

    import mobilevlm_ros.tools.bench as pkg

    folder = pathlib.Path(pkg.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [a.name for a in node.names]
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.name} imports {private} from .{node.module}"
                if path.name not in ("cli.py", "__main__.py"):
                    assert node.module == "common", f"{path.name} imports .{node.module}"
