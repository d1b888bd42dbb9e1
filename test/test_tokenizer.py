"""The synthetic LLaMA-shaped tokenizer, the runtime wrapper, and the text shown while an answer streams."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm
from conftest import shown_texts
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from mobilevlm_ros.model.tokenizer_train import default_corpus, train_tokenizer
from mobilevlm_ros.runtime.errors import EngineError
from mobilevlm_ros.runtime.tokenizer import Tokenizer

TEXTS = [
    "A red circle on the table.",
    "There are 3 cups; the 2nd is at [0.12, 0.34, 0.56, 0.78].",
    "  two leading spaces, trailing too  ",
    "line one\nline two\n\n\ttabbed",
    "Zebra QUIZ xylophone (unseen capitals and words)",
    "café naïve résumé — 日本語のテキスト, emoji 🤖🦾, Ω≈ç√",
    "digits 1234567890 and 3.14159 and -0.5e-3",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model", default_corpus(),
                           vocab_size=32000)


@pytest.fixture(scope="module")
def tok(model_path):
    return Tokenizer(model_path)


@pytest.fixture(scope="module")
def sp(model_path):
    return spm.SentencePieceProcessor(model_file=model_path)


@pytest.mark.parametrize("vocab_size", [32000, 512, 1000])
def test_exact_vocab_size_and_special_ids(tmp_path, vocab_size):
    path = train_tokenizer(tmp_path / "t.model", default_corpus(), vocab_size=vocab_size)
    sp = spm.SentencePieceProcessor(model_file=path)
    assert sp.get_piece_size() == vocab_size
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # LLaMA layout: the 256 byte pieces follow the specials.
    assert sp.id_to_piece(3) == "<0x00>" and sp.id_to_piece(258) == "<0xFF>"


def test_llama_shaped_spec(model_path):
    proto = model_pb2.ModelProto.FromString(open(model_path, "rb").read())
    t, n = proto.trainer_spec, proto.normalizer_spec
    assert t.model_type == model_pb2.TrainerSpec.BPE
    assert t.byte_fallback and t.split_digits and t.vocab_size == 32000
    assert n.name == "identity" and n.add_dummy_prefix and not n.remove_extra_whitespaces


def test_placeholders_are_never_produced(tok, model_path):
    proto = model_pb2.ModelProto.FromString(open(model_path, "rb").read())
    unused = {i for i, p in enumerate(proto.pieces) if p.type == model_pb2.ModelProto.SentencePiece.UNUSED}
    assert len(unused) > 20000  # the corpus supports only a few thousand real pieces
    text = " ".join(TEXTS + default_corpus()[:50] + [proto.pieces[max(unused)].piece])
    assert not unused & set(tok.encode(text, add_bos=False))


def test_deterministic(tmp_path):
    a = train_tokenizer(tmp_path / "a.model", default_corpus(), vocab_size=32000, seed=0)
    b = train_tokenizer(tmp_path / "b.model", default_corpus(), vocab_size=32000, seed=0)
    assert open(a, "rb").read() == open(b, "rb").read()


def test_full_size_training_is_fast(tmp_path):
    import time

    t0 = time.perf_counter()
    train_tokenizer(tmp_path / "t.model", default_corpus(), vocab_size=32000)
    assert time.perf_counter() - t0 < 5.0


def test_too_small_vocab_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(tmp_path / "t.model", default_corpus(), vocab_size=100)


def test_default_corpus_is_varied_and_stable():
    lines = default_corpus()
    assert lines == default_corpus()
    assert 200 <= len(lines) <= 1000 and len(set(lines)) > 150
    joined = "\n".join(lines)
    assert "[0." in joined and "ASSISTANT:" in joined and "purple" in joined


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_bos=True)
    assert ids[0] == tok.bos_id == 1 and tok.eos_id == 2 and tok.vocab_size == 32000
    assert tok.decode(ids) == text


def test_known_encodings(tok, sp):
    # Digits are split one per token; "\n" has no piece of its own and goes through byte fallback,
    # exactly as in LLaMA ("\n" -> "▁", "<0x0A>" after the dummy prefix).
    pieces = [sp.id_to_piece(i) for i in tok.encode("\n2024", add_bos=False)]
    assert pieces == ["▁", "<0x0A>", "2", "0", "2", "4"]
    assert tok.encode("", add_bos=True) == [1] and tok.encode("", add_bos=False) == []
    assert tok.decode([1, 2]) == ""


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(EngineError, match="missing.model"):
        Tokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(EngineError, match="bad.model"):
        Tokenizer(bad)


def _stream(scripted, tok, ids):
    """The texts shown after each token while a Generator produces exactly `ids` (no stop strings)."""
    generator, _ = scripted(tok, ids, max_new_tokens=len(ids), stop=[])
    return shown_texts(generator), generator


@pytest.mark.parametrize("text", TEXTS)
def test_stream_texts_grow_to_decode(scripted, tok, text):
    ids = tok.encode(text, add_bos=False)
    texts, g = _stream(scripted, tok, ids)
    assert texts[-1] == g.text == tok.decode(ids) == text
    # Nothing is shown that later turns out wrong: each text extends the one before, none carries
    # a replacement character.
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert not any("\ufffd" in t for t in texts)


def test_stream_holds_back_split_multibyte_char(scripted, tok, sp):
    # "🤖" is 4 bytes, encoded as 4 byte-fallback tokens: nothing more is shown until the last one.
    ids = tok.encode("a🤖b", add_bos=False)
    byte_ids = [i for i in ids if sp.is_byte(i)]
    assert len(byte_ids) == 4
    texts, _ = _stream(scripted, tok, ids)
    first_byte = ids.index(byte_ids[0])
    assert texts[first_byte:first_byte + 3] == ["a"] * 3
    assert texts[first_byte + 3] == "a🤖"
    assert texts[-1] == "a🤖b"


def test_stream_leading_space_of_first_piece(scripted, tok):
    # The answer's first piece "▁The" decodes without its space; later pieces keep theirs.
    ids = tok.encode("The red ball", add_bos=False)
    texts, _ = _stream(scripted, tok, ids)
    assert texts[0].startswith("T") and texts[-1] == "The red ball"
    assert " " in texts[-1][len(texts[0]):]


def test_stream_random_ids(scripted, tok):
    # Any id sequence (specials, stray bytes, placeholders) shows texts that only grow, ending in decode(all).
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice([rng.randrange(tok.vocab_size), rng.randrange(3, 259), rng.randrange(259, 1300)])
               for _ in range(rng.randint(1, 25))]
        ids = [i for i in ids if i != tok.eos_id]  # EOS would end the answer: not a text question
        if not ids:
            continue
        texts, g = _stream(scripted, tok, ids)
        assert g.text == tok.decode(ids)
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:] + [g.text]))
