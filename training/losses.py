"""The losses of the language phase that are not a head's own (DenseHeads.loss holds those).

lm_loss: the answer tokens. pointer_loss: one attention head looks at the object a phrase
names; without it the model read single objects but could not pick one of several.
word_alignment_loss: image tokens of an object point at its colour and shape word embeddings.
"""

from __future__ import annotations

from typing import List

import torch
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.model.reference import MobileVLM

# The attention head taught to look at the object a phrase names (phrase-conditioned pointer):
# layer 0 can bring the phrase to the answer positions, this head then finds the object's image
# tokens, and the later layers read its box / colour from what it fetched.
POINTER_LAYER, POINTER_HEAD = 1, 0


def lm_loss(model: MobileVLM, embeds, labels, weights, mask, pos):
    """Weighted answer-token cross-entropy, and the hidden states of every layer (for pointer_loss)."""
    out = model.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                          output_hidden_states=True)
    hidden = out.last_hidden_state
    sel = labels != -100
    logits = model.llm.lm_head(hidden[sel])
    ce = F.cross_entropy(logits, labels[sel], reduction="none")
    return (ce * weights[sel]).sum() / weights[sel].sum(), out.hidden_states


def pointer_loss(model: MobileVLM, hidden_states, mask, pos, pointer, owner: torch.Tensor, n_head: int):
    """-log(attention mass on the target object's image tokens) of one head, at the `pointer` positions.

    Recomputes that head's attention probabilities exactly as LlamaAttention does (same q/k
    projections, RoPE, scaling and additive mask) from the layer's input.
    """
    rows, at, obj = pointer
    index = min(POINTER_LAYER, len(model.llm.model.layers) - 1)  # the 1-layer smoke model: its only layer
    layer = model.llm.model.layers[index]
    attn = layer.self_attn
    d = attn.head_dim
    kv = POINTER_HEAD // attn.num_key_value_groups
    x = layer.input_layernorm(hidden_states[index])
    q = F.linear(x, attn.q_proj.weight[POINTER_HEAD * d:(POINTER_HEAD + 1) * d])
    k = F.linear(x, attn.k_proj.weight[kv * d:(kv + 1) * d])
    cos, sin = model.llm.model.rotary_emb(x, pos)
    q, k = apply_rotary_pos_emb(q[:, None], k[:, None], cos, sin)
    scores = (q[:, 0] @ k[:, 0].transpose(1, 2)) * attn.scaling + mask[:, 0]  # (B, L, L)
    logp = F.log_softmax(scores[rows, at], -1)  # (N, L)
    n_img = owner.shape[1]
    target = owner[rows] == (obj + 1)[:, None]  # (N, T)
    keep = target.any(-1)  # an object whose tokens a later one covered entirely has no target
    if not keep.any():
        return scores.sum() * 0
    img = logp[:, n_head:n_head + n_img].masked_fill(~target, float("-inf"))
    return -img.logsumexp(-1)[keep].mean()


def word_alignment_loss(tokens: torch.Tensor, table: torch.Tensor, tok_frac: torch.Tensor,
                        colour_ids: List[int], shape_ids: List[int]) -> torch.Tensor:
    """Image tokens covered by an object point (cosine) towards the embeddings of its colour and shape words.

    The language model then finds "red" in the image the way it finds a repeated word in text.
    """
    frac, cls = tok_frac[..., 1:].max(-1)  # dominant object class of each token (0..11)
    sel = frac >= 0.25
    if not sel.any():
        return tokens.sum() * 0
    t = F.normalize(tokens[sel], dim=-1)
    cls = cls[sel]
    n_shapes = len(S.SHAPES)
    lc = t @ F.normalize(table[colour_ids], dim=-1).T * 10
    ls = t @ F.normalize(table[shape_ids], dim=-1).T * 10
    return F.cross_entropy(lc, cls // n_shapes) + F.cross_entropy(ls, cls % n_shapes)
