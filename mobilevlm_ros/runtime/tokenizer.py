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
    def processor(self) -> spm.SentencePieceProcessor:
        return self._sp

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
