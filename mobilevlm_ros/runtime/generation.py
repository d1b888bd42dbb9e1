"""Generation as an object advanced one token at a time (the shape of onnxruntime-genai's
`og.Generator` and llama2.c's `generate`); `VLM.describe` runs the one loop over it:

    generator = Generator(decoder, table, tokenizer, prefill_logits, GenerationParams(max_new_tokens=64))
    while not generator.is_done():
        generator.generate_next_token()
        show(generator.text)        # the answer so far, safe to show
    generator.finish_reason, generator.token_ids, generator.text

It stops on EOS, a stop string, max_new_tokens, or a cancel between tokens. Batched decoding
(batch.py) splits a step in two: `next_token()` chooses the token, one decoder call runs it for
every sequence of the batch, and `feed()` hands each its logits.

A typed answer (constraint.py) has a grammar: its mask goes over the logits before the sampler,
greedy or not, and where the grammar then allows one continuation only, those tokens (`forced`)
follow the chosen one into the same decoder call (jump-forward). It ends "complete" when the
grammar allows nothing more.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .answer_types import AnswerType
from .constraint import Constraint, chosen_probability
from .engines import DecoderEngine
from .tokenizer import Tokenizer
from .types import Timings

# The reference strips "</s>" when it shows up as text.
DEFAULT_STOP = ("</s>",)
MAX_NEW_TOKENS_LIMIT = 2048
# Beyond 2 the distribution is so flat that answers are noise; the node parameter has the same limit.
MAX_TEMPERATURE = 2.0


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
            raise ValueError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}, "
                             f"got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:  # NaN fails this too
            raise ValueError(f"temperature must be in 0..{MAX_TEMPERATURE:g}, got {self.temperature}")
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


class Generator:
    """One answer being generated from the decoder's state after prefill.

    `finish_reason` is "" while it runs, then "eos", "stop", "length", "cancelled", or "complete" (a
    typed answer's grammar allows nothing more). `timings` (decode_s, new_tokens) is updated as it goes.
    """

    def __init__(self, decoder: DecoderEngine, table: np.ndarray, tokenizer: Tokenizer,
                 prefill_logits: np.ndarray, params: GenerationParams,
                 cancel: Optional[threading.Event] = None, timings: Optional[Timings] = None,
                 row: int = 0, constraint: Optional[Constraint] = None,
                 answer_type: Optional[AnswerType] = None, start_length: int = 0):
        """constraint, answer_type: a typed answer's grammar state and type; start_length: the row's
        cached positions at the end of the prompt (closed sets are scored from there)."""
        self.decoder = decoder
        self.row = row  # the decoder's cache row this answer lives in
        self.table = table
        self.tokenizer = tokenizer
        self.logits = prefill_logits  # scores of the next token
        self.params = params
        self.cancel = cancel
        self.timings = timings if timings is not None else Timings()
        self.sample = Sampler(params)
        self.stops = [s for s in params.stop if s]
        self.token_ids: List[int] = []
        self.finish_reason = ""
        self._decoded = ""  # the text of token_ids, cut at a stop string
        self.constraint = constraint
        self.answer_type = answer_type or AnswerType()
        self.start_length = start_length
        self.forced: List[int] = []  # tokens the grammar forced after the last chosen one (in token_ids)
        # Typed answers: the product of each chosen token's probability among the allowed ones.
        self.probability = 1.0
        # Closed sets: the unmasked logits at each choice, by the tokens before it (their confidence).
        self.choice_logits: Optional[dict] = {} if self.answer_type.alternatives() is not None else None

    def is_done(self) -> bool:
        return self.finish_reason != ""

    def generate_next_token(self) -> None:
        """Choose the next token from the current logits; unless that ends the answer, run the
        decoder on it for the logits after it."""
        token = self.next_token()
        if token is not None:
            t0 = time.perf_counter()
            logits = self.decoder.run(self.table[[token] + self.forced], self.row)
            self.feed(logits, time.perf_counter() - t0)

    def next_token(self) -> Optional[int]:
        """Choose the next token from the current logits. Returns it when the decoder must run on
        it next, followed by `forced` (then call `feed`), None when the answer has ended
        (`finish_reason` says why)."""
        self.forced = []
        if self.is_done():
            return None
        p, eos = self.params, self.tokenizer.eos_id
        if self.cancel is not None and self.cancel.is_set():
            self.finish_reason = "cancelled"
            return None
        if self.choice_logits is not None:
            self.choice_logits[tuple(self.token_ids)] = np.array(self.logits)
        if self.constraint is not None:  # the grammar allows EOS only where the answer is whole
            self.constraint.mask(self.logits)
        elif p.ignore_eos:  # as transformers' min_new_tokens and llama.cpp's ignore_eos: EOS cannot win
            self.logits[eos] = -np.inf
        token = self.sample(self.logits)
        if self.constraint is not None:
            self.probability *= chosen_probability(self.logits, token)
        if token == eos and (self.constraint is not None or not p.ignore_eos):
            self.finish_reason = "eos"
            return None
        self.token_ids.append(token)
        if self.constraint is not None:
            self.constraint.consume(token)
            if not self.constraint.is_complete():
                self.forced = self.constraint.forced(p.max_new_tokens - len(self.token_ids))
                self.token_ids.extend(self.forced)
                self.timings.forced_tokens += len(self.forced)
        self.timings.new_tokens = len(self.token_ids)
        # All ids decoded each time, not piece by piece: a piece's text depends on its neighbours
        # (the first loses its leading space, byte pieces form a character only together). O(n) per
        # token, and answers are a few hundred tokens.
        text = self.tokenizer.decode(self.token_ids)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._decoded = text[:cut]
            self.finish_reason = "stop"
            return None
        self._decoded = text
        if self.constraint is not None and self.constraint.is_complete():
            self.finish_reason = "complete"  # nothing may follow: no decoder step for it
            return None
        if len(self.token_ids) >= p.max_new_tokens:
            self.finish_reason = "length"  # no decoder step for logits nobody reads
            return None
        return token

    def feed(self, logits: np.ndarray, seconds: float) -> None:
        """The decoder's logits after the token `next_token` returned, and the time that step took."""
        self.logits = logits
        self.timings.decode_s += seconds

    @property
    def text(self) -> str:
        """The answer so far, safe to show: while generating, a tail that may still become a stop
        string or is half a UTF-8 character (U+FFFD) is held back; once done, all of it."""
        text = self._decoded
        if self.is_done():
            return text
        return text[:min(len(text) - _held_back(text, self.stops), len(text.rstrip("\ufffd")))]
