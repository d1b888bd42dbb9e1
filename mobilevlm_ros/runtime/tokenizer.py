"""The LLaMA sentencepiece tokenizer, and a decoder that turns a token stream into text pieces."""

from __future__ import annotations

import os
from typing import List, Sequence

import sentencepiece as spm

from .errors import EngineError


class Tokenizer:
    """Thin wrapper over a sentencepiece `tokenizer.model` (the file MobileVLM checkpoints ship)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise EngineError(f"tokenizer file {self.path}: not found")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(self.path)
        except (OSError, RuntimeError) as e:
            raise EngineError(f"tokenizer file {self.path}: not a sentencepiece model ({e})") from None

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, add_bos: bool) -> List[int]:
        # sentencepiece itself adds LLaMA's dummy prefix space ("hi" -> "▁hi"), as the
        # reference's slow LlamaTokenizer does for each chunk.
        ids = self._sp.encode(text)
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        # Control pieces (<s>, </s>) decode to nothing; the dummy prefix space of the first piece is dropped.
        return self._sp.decode(list(ids))


class StreamDecoder:
    """Turns token ids, pushed one at a time, into new text pieces.

    Why decode everything each time instead of piece by piece: a piece's text depends on its
    neighbours (the first piece loses its leading space; byte-fallback pieces only form a character
    together). Decoding all ids and emitting the new suffix keeps `"".join(pieces) == decode(ids)`.
    A tail that ends in U+FFFD is an incomplete UTF-8 sequence, so it is held back until the next
    byte arrives (or until `flush`).
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._ids: List[int] = []
        self._text = ""
        self._emitted = 0  # characters of self._text already returned

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        # Decoding is O(n) per token; answers are a few hundred tokens, so this stays cheap.
        self._text = self._tok.decode(self._ids)
        if self._text.endswith("\ufffd"):
            return ""
        return self._take()

    def flush(self) -> str:
        """Whatever is still held back (a truly invalid byte tail); call once at end of generation."""
        return self._take()

    def _take(self) -> str:
        piece = self._text[self._emitted:]
        self._emitted = len(self._text)
        return piece

    @property
    def text(self) -> str:
        """The full text of every id pushed so far, including any held-back tail."""
        return self._text

    @property
    def ids(self) -> List[int]:
        return list(self._ids)
