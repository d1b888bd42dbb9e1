"""Train a small sentencepiece tokenizer shaped like LLaMA's, for synthetic checkpoints and tests.

Real MobileVLM checkpoints ship LLaMA's `tokenizer.model`: BPE, byte fallback, digits split, a dummy
prefix space, identity normalisation, ids unk=0 / bos=1 / eos=2, no pad piece, vocab exactly 32000.
A synthetic checkpoint must match its config's vocab size exactly, but a few hundred lines cannot
support 32000 merges. So we train the BPE part as large as the corpus allows (bounded, to stay fast)
and fill the remaining ids with UNUSED placeholder pieces: sentencepiece never emits UNUSED pieces
when encoding (unlike USER_DEFINED ones, which would be matched in the user's text), and no
merge can form `<unused_N>` from real pieces, so they only reserve ids.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, List

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from ..runtime.prompt import SYSTEM_V1

# unk + bos + eos + 256 byte pieces: the smallest vocab that can hold any text.
_N_META = 3 + 256
# BPE pieces beyond this buy nothing on a small corpus and only slow training down.
_MAX_BPE_VOCAB = 4000
_PLACEHOLDER = "<unused_{}>"


def _trainer_options(vocab_size: int) -> dict:
    """Options mirroring LLaMA's trainer_spec / normalizer_spec where they change the encoding."""
    return dict(
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        character_coverage=1.0,
        max_sentencepiece_length=16,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        unk_surface=" \u2047 ",
        # Let BPE stop when the corpus runs out of merges; we pad the rest below.
        hard_vocab_limit=False,
        # One thread and no sampling: the same corpus gives the same bytes.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )


def train_tokenizer(
    out_path: str | os.PathLike,
    corpus_lines: Iterable[str] | None = None,
    vocab_size: int = 32000,
    seed: int = 0,
) -> str:
    """Train and write a LLaMA-shaped `tokenizer.model` with exactly `vocab_size` pieces. Returns the path."""
    lines = [ln for ln in (default_corpus() if corpus_lines is None else corpus_lines) if ln.strip()]
    if not lines:
        raise ValueError("train_tokenizer: the corpus is empty")
    # Every character of the corpus gets a piece (character_coverage=1.0), the space as "▁".
    n_chars = len({c for ln in lines for c in ln} | {" "})
    if vocab_size < _N_META + n_chars:
        raise ValueError(
            f"train_tokenizer: vocab_size {vocab_size} is too small for this corpus; "
            f"need at least {_N_META + n_chars} ({_N_META} special/byte pieces + {n_chars} characters)"
        )

    # BPE without sentence sampling uses no randomness; the seed is pinned anyway so that
    # changing those options later cannot make the output vary from run to run.
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        **_trainer_options(min(vocab_size, _MAX_BPE_VOCAB)),
    )
    proto = model_pb2.ModelProto.FromString(buf.getvalue())
    _pad_with_placeholders(proto, vocab_size)

    data = proto.SerializeToString(deterministic=True)
    with open(out_path, "wb") as f:
        f.write(data)
    return str(out_path)


def _pad_with_placeholders(proto: model_pb2.ModelProto, vocab_size: int) -> None:
    n_missing = vocab_size - len(proto.pieces)
    if n_missing < 0:
        raise ValueError(f"train_tokenizer: trainer produced {len(proto.pieces)} pieces, "
                         f"more than {vocab_size}")
    lowest = min(p.score for p in proto.pieces)
    for i in range(n_missing):
        piece = proto.pieces.add()
        piece.piece = _PLACEHOLDER.format(i)
        piece.score = lowest - 1.0 - i  # below every real piece, still decreasing like LLaMA's
        piece.type = model_pb2.ModelProto.SentencePiece.UNUSED
    proto.trainer_spec.vocab_size = vocab_size


# --- corpus -------------------------------------------------------------------------------------

_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "grey", "brown"]
_SHAPES = ["circle", "square", "triangle", "box", "ball", "cup", "chair", "robot", "door", "bottle"]
_PLACES = ["on the table", "on the floor", "near the wall", "in the corner", "next to the door",
           "under the chair", "on the left", "on the right", "in the middle", "behind the robot"]
_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_QUESTIONS = [
    "Describe the image briefly.",
    "What is in the image?",
    "How many objects are there?",
    "What colour is the {c} {s}?",
    "Where is the {c} {s}?",
    "Is there a {s} in the picture?",
    "Please provide the bounding box coordinate of the region this sentence describes: the {c} {s}.",
    "Can the robot reach the {s}?",
]


def default_corpus() -> List[str]:
    """A few hundred varied English lines about simple scenes, built deterministically (no downloads)."""
    # No newlines anywhere: like LLaMA, "\n" must encode through byte fallback (<0x0A>).
    lines = [
        SYSTEM_V1,
        "USER: <image> Describe the image briefly. ASSISTANT:",
        "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
        "0 1 2 3 4 5 6 7 8 9 (a) {b} <c> 'd' \"e\" f; g? h/i\\j k=l+m*n-o_p%q&r#s@t~u|v^w`x$",
    ]
    n = len(_COLOURS)
    for i in range(300):
        # Co-prime strides walk through the combinations without repeating too soon.
        c, s, p = _COLOURS[i % n], _SHAPES[(i * 3 + 1) % n], _PLACES[(i * 7 + 2) % n]
        c2, s2 = _COLOURS[(i * 3 + 5) % n], _SHAPES[(i * 7) % n]
        count = _NUMBERS[i % len(_NUMBERS)]
        x1, y1 = (i * 37 % 50) / 100, (i * 53 % 50) / 100
        x2, y2 = x1 + (i * 29 % 45 + 5) / 100, y1 + (i * 31 % 45 + 5) / 100
        box = f"[{x1:.2f}, {y1:.2f}, {x2:.2f}, {y2:.2f}]"
        kind = i % 6
        if kind == 0:
            lines.append(f"A {c} {s} {p}.")
        elif kind == 1:
            lines.append(f"There are {count} {s}s {p}, and a {c2} {s2} beside them.")
        elif kind == 2:
            lines.append(f"The {c} {s} {box} is {p}.")
        elif kind == 3:
            lines.append(_QUESTIONS[i % len(_QUESTIONS)].format(c=c, s=s))
        elif kind == 4:
            lines.append(f"{box}")
        else:
            lines.append(f"Step {i}: move {i % 17 + 1}.{i % 10} m forward, turn {i * 15 % 360} degrees.")
    lines += [
        "The image shows a small room with a table, two chairs and a robot arm.",
        "A person is holding a cup of coffee. The cup is white.",
        "Café, naïve, résumé: accents appear sometimes.",
        "Temperature: 21.5 °C; speed 65.3 tokens/s; 1,234,567 items.",
    ]
    return lines
