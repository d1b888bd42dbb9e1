"""Which matrices to keep at int8, by measurement instead of llama.cpp's fixed rule.

Each Linear's 4-bit sensitivity is measured on the calibration samples: the increase of the model's
next-token loss (against the float model's own greedy choices, so samples of embeddings need no
labels) when that Linear alone is rounded to int4 on onnxruntime's grid and everything else stays
float. int8 then goes to the matrices that buy the most loss per byte, until the extra bytes of a
budget are spent; by default the budget is what llama.cpp's rule spends (lm_head and the sensitive
layers' v and down projections at int8), so the two choices compare at equal bytes.

Bytes are those onnxruntime's CPU MatMulNBits reads: per weight, bits + 64 / block (the packed codes,
an fp32 scale and an fp32 block sum per block: layout.py).
"""

from __future__ import annotations

import re
from typing import Dict, List, Sequence

import torch

INT8_BLOCK = 64


def bits_per_weight(bits: int, block: int) -> float:
    return bits + 64.0 / block


def _linears(llm) -> Dict[str, torch.nn.Linear]:
    return {name: m for name, m in llm.named_modules() if isinstance(m, torch.nn.Linear)}


def _round_to_int4(weight: torch.Tensor, block: int) -> torch.Tensor:
    """The weight rounded to nearest on onnxruntime's symmetric int4 grid (a block's largest-magnitude
    weight at -8), de-quantized."""
    n, k = weight.shape
    blocks = -(-k // block)
    padded = torch.zeros(n, blocks * block, dtype=torch.float32)
    padded[:, :k] = weight.float()
    grouped = padded.view(n, blocks, block)
    peak = torch.gather(grouped, 2, grouped.abs().argmax(-1, keepdim=True))
    scale = torch.where(peak == 0, torch.ones_like(peak), peak / -8.0)
    q = torch.clamp(torch.round(grouped / scale), -8, 7)
    return (q * scale).view(n, -1)[:, :k].to(weight.dtype)


def _inputs(sample: dict) -> dict:
    if sample.get("input_ids") is not None:
        return {"input_ids": sample["input_ids"], "attention_mask": sample["attention_mask"]}
    return {"inputs_embeds": sample["inputs_embeds"], "attention_mask": sample["attention_mask"]}


def _layer_of(name: str, layers: int) -> int:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else layers  # lm_head: after the last layer


@torch.no_grad()
def _hidden_states(llm, sample: dict) -> List[torch.Tensor]:
    """The float model's input to each decoder layer, and to the final norm (index num_layers)."""
    seen: List[torch.Tensor] = []

    def record(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    modules = (*llm.model.layers, llm.model.norm)
    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    try:
        llm(**_inputs(sample), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def _loss_from(llm, start: int, hidden: List[List[torch.Tensor]], samples, targets) -> float:
    """Next-token loss against `targets` running only layers `start`.. on the float inputs to layer
    `start`: a matrix of layer i changes nothing before it, so half the model on average is skipped."""
    layers = llm.model.layers
    llm.model.layers = torch.nn.ModuleList(list(layers)[start:])
    try:
        total, count = 0.0, 0
        for states, sample, target in zip(hidden, samples, targets):
            logits = llm(inputs_embeds=states[start], attention_mask=sample["attention_mask"],
                         use_cache=False).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += target.numel()
    finally:
        llm.model.layers = layers
    return total / count


@torch.no_grad()
def sensitivities(llm, samples: Sequence[dict], block: int, log=None) -> Dict[str, float]:
    """Linear name -> the loss increase (nats per token) when it alone is int4 at `block`."""
    # the float model's own choices are the labels
    targets = [llm(**_inputs(s), use_cache=False).logits[0, :-1].argmax(-1) for s in samples]
    hidden = [_hidden_states(llm, s) for s in samples]
    count = len(llm.model.layers)
    base = {}
    out = {}
    for i, (name, module) in enumerate(_linears(llm).items()):
        start = _layer_of(name, count)
        if start not in base:
            base[start] = _loss_from(llm, start, hidden, samples, targets)
        # A new Parameter, not .data: a tied lm_head would otherwise round the embedding table too.
        original = module.weight
        module.weight = torch.nn.Parameter(_round_to_int4(original.data, block), requires_grad=False)
        try:
            out[name] = _loss_from(llm, start, hidden, samples, targets) - base[start]
        finally:
            module.weight = original
        if log is not None and (i + 1) % 20 == 0:
            log(f"sensitivity: {i + 1} matrices")
    return out


def extra_bytes(llm, names: Sequence[str], block: int) -> float:
    """Bytes per token the Linears `names` add at int8 (block 64) over int4 at `block`."""
    linears = _linears(llm)
    per_weight = (bits_per_weight(8, INT8_BLOCK) - bits_per_weight(4, block)) / 8
    return sum(linears[n].weight.numel() * per_weight for n in names)


def choose_int8(llm, scores: Dict[str, float], block: int, budget: float) -> List[str]:
    """The Linears to keep at int8: by loss bought per extra byte, most first, while the extra bytes
    stay within `budget`."""
    linears = _linears(llm)
    per_weight = (bits_per_weight(8, INT8_BLOCK) - bits_per_weight(4, block)) / 8
    order = sorted(scores, key=lambda n: scores[n] / (linears[n].weight.numel() * per_weight),
                   reverse=True)
    chosen, spent = [], 0.0
    for name in order:
        cost = linears[name].weight.numel() * per_weight
        if scores[name] > 0 and spent + cost <= budget:
            chosen.append(name)
            spent += cost
    return sorted(chosen)


def rule_budget(llm, block: int) -> float:
    """The extra bytes llama.cpp's rule spends on int8: lm_head and the sensitive layers' v and down."""
    from .layout import sensitive_layers

    layers = sensitive_layers(llm.config.num_hidden_layers)
    names = ["lm_head"] + [f"model.layers.{i}.{part}" for i in layers
                           for part in ("self_attn.v_proj", "mlp.down_proj")]
    return extra_bytes(llm, [n for n in names if n in _linears(llm)], block)
