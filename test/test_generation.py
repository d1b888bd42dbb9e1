"""The generation loop: greedy, seeded sampling, top-p, stop rules, streaming, cancel.

A scripted decoder stands in for the engine so each case has a known answer; the loop on the
real engine is covered by test_parity.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mobilevlm_ros.model.tokenizer_train import train_tokenizer
from mobilevlm_ros.runtime.generation import Generation, GenerationParams, Sampler
from mobilevlm_ros.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(str(path), vocab_size=512)
    return Tokenizer(str(path))


class Scripted:
    """Produces logits that make `script[i]` the greedy choice at step i."""

    def __init__(self, script, vocab):
        self.script, self.vocab, self.calls = list(script), vocab, 0

    def logits(self, i):
        x = np.zeros(self.vocab, np.float32)
        x[self.script[min(i, len(self.script) - 1)]] = 5.0
        return x

    def run(self, embeds):
        self.calls += 1
        return self.logits(self.calls)


def _gen(tok, script, cancel=None, **kw):
    dec = Scripted(script, tok.vocab_size)
    table = np.zeros((tok.vocab_size, 4), np.float32)
    g = Generation(dec, table, tok, dec.logits(0), GenerationParams(**kw).validate(), cancel)
    return g, dec


def test_greedy_stops_at_eos_and_streams_the_text(tok):
    ids = tok.encode("a red circle and a blue square", add_bos=False)
    g, dec = _gen(tok, ids + [tok.eos_id, 7, 7], max_new_tokens=50)
    pieces = list(g)
    assert g.finish_reason == "eos"
    assert g.token_ids == ids
    assert "".join(pieces) == g.text == "a red circle and a blue square"
    assert len(pieces) > 1  # streamed, not one lump
    assert dec.calls == len(ids)  # no decoder step after EOS was chosen


def test_max_tokens_and_ignore_eos(tok):
    ids = tok.encode("one two", add_bos=False)
    g, _ = _gen(tok, ids + [tok.eos_id], max_new_tokens=2)
    list(g)
    assert (g.finish_reason, len(g.token_ids)) == ("length", 2)
    g, _ = _gen(tok, [tok.eos_id], max_new_tokens=6, ignore_eos=True)
    list(g)
    assert g.finish_reason == "length" and len(g.token_ids) == 6 and tok.eos_id not in g.token_ids


def test_stop_string_is_cut_even_across_tokens(tok):
    ids = tok.encode("yes it is</s> and more", add_bos=False)
    g, _ = _gen(tok, ids, max_new_tokens=60, stop=["</s>"])
    pieces = list(g)
    assert g.finish_reason == "stop"
    assert g.text == "yes it is" and "".join(pieces) == "yes it is"
    assert not any("<" in p for p in pieces)  # the stop string's start was held back, never shown


def test_cancel_between_tokens(tok):
    cancel = threading.Event()
    ids = tok.encode("a b c d e f g h", add_bos=False)
    g, dec = _gen(tok, ids, cancel=cancel, max_new_tokens=50)
    it = iter(g)
    next(it)
    cancel.set()
    rest = list(it)
    assert g.finish_reason == "cancelled"
    assert dec.calls <= 2 and len(g.token_ids) <= 2 and "".join(rest) == g.text[len(g.text) - len("".join(rest)):]


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    s1 = Sampler(GenerationParams(temperature=1.0, seed=3))
    s2 = Sampler(GenerationParams(temperature=1.0, seed=3))
    a, b = [s1(logits) for _ in range(200)], [s2(logits) for _ in range(200)]
    assert a == b and len(set(a)) == 4
    freq = np.bincount(a, minlength=4) / 200
    assert abs(freq[0] - 0.5) < 0.12
    top = Sampler(GenerationParams(temperature=1.0, top_p=0.75, seed=0))
    picks = {top(logits) for _ in range(300)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.75; 2 and 3 are outside the nucleus
    assert Sampler(GenerationParams(temperature=0.0))(logits) == 0


@pytest.mark.parametrize("kw", [dict(max_new_tokens=0), dict(max_new_tokens=10**6), dict(temperature=-1),
                                dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        GenerationParams(**kw).validate()


def test_iterating_again_continues_the_same_loop(tok):
    ids = tok.encode("one two three four", add_bos=False)
    g, dec = _gen(tok, ids + [tok.eos_id], max_new_tokens=50)
    first = next(iter(g))
    rest = list(g)
    assert first + "".join(rest) == g.text == "one two three four"
    assert g.token_ids == ids and dec.calls == len(ids)
