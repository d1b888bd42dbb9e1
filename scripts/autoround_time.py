"""AutoRound's time and memory at a real shape, projected from a few of its layers (BENCHMARKS.md):

    python scripts/autoround_time.py v2-1.7b [--layers 2] [--iters 10] [--samples 32] [--project 100 200]

A synthetic checkpoint of the shape (random weights: time and memory do not depend on their values)
is loaded whole, in fp32 as the exporter loads it, so the peak RSS includes the full model. AutoRound
then learns only its first `--layers` layers: without iterations (its fast mode, a path of its own),
and with `--iters` and twice `--iters`, whose difference gives the cost of one iteration of one layer.
Projected time for I > 0 iterations = layers x (time at --iters + (I - --iters) x per-iteration). Samples are
random ids of 256 tokens: AutoRound's per-iteration cost is one batch of 8 of them, whatever the count.
"""

from __future__ import annotations

import argparse
import copy
import resource
import tempfile
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shape")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--project", type=int, nargs="*", default=[0, 50, 100, 200])
    a = p.parse_args(argv)
    from mobilevlm_ros.model.quant.autoround import learn
    from mobilevlm_ros.model.quant.quality import load_language_model
    from mobilevlm_ros.model.synthetic import write_synthetic

    with tempfile.TemporaryDirectory(prefix="autoround_time_") as ckpt:
        write_synthetic(a.shape, ckpt)
        lm = load_language_model(ckpt)
    llm = lm.llm.float()
    total_layers = len(llm.model.layers)
    llm.model.layers = llm.model.layers[:a.layers]
    llm.config.num_hidden_layers = a.layers
    seed = torch.Generator().manual_seed(0)
    ids = torch.randint(3, llm.config.vocab_size, (a.samples, 257), generator=seed)
    mask = torch.ones(1, 257, dtype=torch.long)
    samples = [{"input_ids": row[None], "attention_mask": mask} for row in ids]
    seconds = {}
    for iters in (0, a.iters, 2 * a.iters):
        model = copy.deepcopy(llm)
        t0 = time.perf_counter()
        learn(model, samples, a.block, iters=iters)
        seconds[iters] = (time.perf_counter() - t0) / a.layers
        del model
    per_iter = (seconds[2 * a.iters] - seconds[a.iters]) / a.iters
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"{a.shape}: {total_layers} layers; per layer {seconds[0]:.1f} s in fast mode, "
          f"{seconds[a.iters]:.1f} s at {a.iters} iterations, {per_iter:.2f} s per further iteration "
          f"({a.samples} samples of 257 tokens, block {a.block}); peak RSS {peak_gib:.1f} GiB")
    for iters in a.project:
        per_layer = seconds[0] if iters == 0 else seconds[a.iters] + (iters - a.iters) * per_iter
        minutes = total_layers * per_layer / 60
        print(f"  projected at {iters} iterations: {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
