"""The Generator: greedy, seeded sampling, top-p, stop rules, the text shown while it runs, cancel.

A scripted decoder (conftest.ScriptedDecoder) stands in for the engine so each case has a known
answer; the loop on the real engine is covered by test_parity.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import shown_texts

from mobilevlm_ros.model.tokenizer_train import train_tokenizer
from mobilevlm_ros.runtime.generation import GenerationParams, Sampler
from mobilevlm_ros.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(str(path), vocab_size=512)
    return Tokenizer(str(path))


def test_greedy_stops_at_eos_and_shows_the_text_as_it_grows(tok, scripted):
    ids = tok.encode("a red circle and a blue square", add_bos=False)
    g, dec = scripted(tok, ids + [tok.eos_id, 7, 7], max_new_tokens=50)
    texts = shown_texts(g)
    assert g.finish_reason == "eos"
    assert g.token_ids == ids and g.timings.new_tokens == len(ids)
    assert texts[-1] == g.text == "a red circle and a blue square"
    assert len(set(texts)) > 2  # streamed, not one lump
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # each text extends the last one
    assert dec.calls == len(ids)  # no decoder step after EOS was chosen


def test_max_tokens_and_ignore_eos(tok, scripted):
    ids = tok.encode("one two", add_bos=False)
    g, dec = scripted(tok, ids + [tok.eos_id], max_new_tokens=2)
    shown_texts(g)
    assert (g.finish_reason, len(g.token_ids)) == ("length", 2)
    assert dec.calls == 1  # no decoder step for the logits after the last token
    g, _ = scripted(tok, [tok.eos_id], max_new_tokens=6, ignore_eos=True)
    shown_texts(g)
    assert g.finish_reason == "length" and len(g.token_ids) == 6 and tok.eos_id not in g.token_ids


def test_stop_string_is_cut_even_across_tokens(tok, scripted):
    ids = tok.encode("yes it is</s> and more", add_bos=False)
    g, _ = scripted(tok, ids, max_new_tokens=60, stop=["</s>"])
    texts = shown_texts(g)
    assert g.finish_reason == "stop"
    assert g.text == texts[-1] == "yes it is"
    assert not any("<" in t for t in texts)  # the stop string's start was held back, never shown


def test_cancel_between_tokens(tok, scripted):
    cancel = threading.Event()
    ids = tok.encode("a b c d e f g h", add_bos=False)
    g, dec = scripted(tok, ids, cancel=cancel, max_new_tokens=50)
    g.generate_next_token()
    cancel.set()
    g.generate_next_token()
    assert g.is_done() and g.finish_reason == "cancelled"
    assert dec.calls == 1 and len(g.token_ids) == 1 and g.text == tok.decode(ids[:1])
    g.generate_next_token()  # a finished generator stays finished
    assert dec.calls == 1 and g.finish_reason == "cancelled"


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
                                dict(temperature=2.5), dict(temperature=float("nan")), dict(top_p=0.0),
                                dict(top_p=1.5)])
def test_bad_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        GenerationParams(**kw).validate()
