"""The generation loop as an object: iterate it for text pieces; it stops on EOS, a stop string,
max tokens, or a cancel between tokens.

    gen = Generation(decoder, table, tokenizer, first_logits, GenerationParams(max_new_tokens=64))
    for piece in gen:
        print(piece, end="")
    gen.finish_reason, gen.token_ids, gen.text
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

import numpy as np

from .engines import DecoderEngine
from .tokenizer import StreamDecoder, Tokenizer

# The reference strips "</s>" when it shows up as text.
DEFAULT_STOP = ("</s>",)
MAX_NEW_TOKENS_LIMIT = 2048


@dataclass
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy, as the reference evaluates
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: Sequence[str] = field(default_factory=lambda: list(DEFAULT_STOP))
    ignore_eos: bool = False  # benchmarks: EOS is never chosen, so max_new_tokens are always produced

    def validate(self) -> "GenerationParams":
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 10.0:
            raise ValueError(f"temperature must be in 0..10, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        return self


class Sampler:
    """Greedy, or temperature + nucleus (top-p) sampling from a seeded generator."""

    def __init__(self, params: GenerationParams):
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature <= 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if self.top_p < 1.0:
            order = np.argsort(-p)
            keep = int(np.searchsorted(np.cumsum(p[order]), self.top_p)) + 1  # smallest set reaching top_p
            order = order[:keep]
            return int(order[self.rng.choice(keep, p=p[order] / p[order].sum())])
        return int(self.rng.choice(p.shape[0], p=p))


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could still grow into a stop string."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    return n


class Generation:
    """Iterates text pieces; after the loop `finish_reason` is "eos", "stop", "length" or "cancelled"."""

    def __init__(self, decoder: DecoderEngine, table: np.ndarray, tokenizer: Tokenizer, first_logits: np.ndarray,
                 params: GenerationParams, cancel: Optional[threading.Event] = None):
        self.decoder = decoder
        self.table = table
        self.tokenizer = tokenizer
        self.logits = first_logits
        self.params = params
        self.cancel = cancel
        self.sample = Sampler(params)
        self.stream = StreamDecoder(tokenizer)
        self.token_ids: List[int] = []
        self.text = ""
        self.finish_reason = ""
        self.decode_s = 0.0
        self._loop: Optional[Iterator[str]] = None

    def __iter__(self) -> Iterator[str]:
        # One loop per Generation: iterating again continues it, never restarts it.
        if self._loop is None:
            self._loop = self._run()
        return self._loop

    def _run(self) -> Iterator[str]:
        p, stops, eos = self.params, [s for s in self.params.stop if s], self.tokenizer.eos_id
        emitted = 0
        for i in range(p.max_new_tokens):
            if self.cancel is not None and self.cancel.is_set():
                self.finish_reason = "cancelled"
                break
            if p.ignore_eos:  # as transformers' min_new_tokens and llama.cpp's ignore_eos: EOS cannot win
                self.logits[eos] = -np.inf
            token = self.sample(self.logits)
            if token == eos and not p.ignore_eos:
                self.finish_reason = "eos"
                break
            self.token_ids.append(token)
            self.stream.push(token)
            full = self.stream.text
            cut = min((j for j in (full.find(s) for s in stops) if j >= 0), default=-1)
            if cut >= 0:
                self.text = full[:cut]
                if cut > emitted:
                    yield full[emitted:cut]
                self.finish_reason = "stop"
                return
            # Hold back what may still become a stop string or is half a UTF-8 character.
            safe = min(len(full) - _held_back(full, stops), len(full.rstrip("\ufffd")))
            if safe > emitted:
                yield full[emitted:safe]
                emitted = safe
            self.text = full
            if i + 1 < p.max_new_tokens:
                t0 = time.perf_counter()
                self.logits = self.decoder.run(self.table[token][None])
                self.decode_s += time.perf_counter() - t0
        else:
            self.finish_reason = "length"
        self.text = self.stream.text
        if len(self.text) > emitted:
            yield self.text[emitted:]
