"""Continuous batching: several answers decoded together, one decoder call per token for all.

    batch = vlm.batch()                              # up to vlm.max_batch sequences
    front = batch.add(rgb_front)                     # a caption, prefilled alone into a free cache row
    left = batch.add(rgb_left, "Where is the door?")
    while batch.sequences:
        for seq in batch.step():                     # one token for every sequence
            print(seq.answer.text)                   # those that ended have left the batch

A sequence joins between any two steps (`add`) and leaves when it ends (EOS, stop string, length)
or is cancelled, without waiting for the others: llama.cpp's parallel slots, not onnxruntime-genai's
static CPU batches. Decode reads every weight once per step whatever the number of rows, so on a
memory-bound CPU several sequences cost little more than one; prefill is compute-bound and runs
alone. Not thread-safe, like VLM: one thread owns the batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np

from .answer_types import AnswerType
from .generation import GenerationParams, Generator
from .types import Answer


@dataclass
class Sequence:
    """One answer in a batch: its generator while it runs, its Answer once it has left."""

    generator: Generator
    rgb: np.ndarray
    question: Optional[str]
    phrase: str
    on_text: Optional[Callable[[str, int], None]]
    started: float
    tag: object = None  # the caller's (e.g. the worker's job)
    answer: Optional[Answer] = field(default=None)

    @property
    def row(self) -> int:
        return self.generator.row


class Batch:
    def __init__(self, vlm):
        self.vlm = vlm
        self.sequences: List[Sequence] = []
        # Since the batch was made: tokens its decoder steps produced (one per row), and their time.
        self.decode_tokens = 0
        self.decode_s = 0.0

    @property
    def free(self) -> int:
        """Sequences that can still join (cache rows no batch of this VLM decodes in)."""
        return self.vlm.max_batch - len(self.vlm.rows_in_use)

    def add(self, rgb: np.ndarray, question: Optional[str] = None, params: Optional[GenerationParams] = None,
            cancel: Optional[threading.Event] = None, on_text: Optional[Callable[[str, int], None]] = None,
            phrase: str = "", tag: object = None, answer_type: Optional[AnswerType] = None,
            history: Tuple = ()) -> Sequence:
        """Prefill `question` (None: a caption) about `rgb` into a free cache row; the sequence
        decodes from the next `step()` on. Bad input raises as VLM.describe does, and nothing joins.
        A row that already holds this frame's image prefix is taken first (no vision, no image prefill)."""
        free = [r for r in range(self.vlm.max_batch) if r not in self.vlm.rows_in_use]
        if not free:
            raise RuntimeError(f"the batch is full: all {self.vlm.max_batch} cache rows decode a sequence")
        started = time.perf_counter()
        row = self.vlm.row_for(rgb, free)
        generator = self.vlm.generator(rgb, question, params, cancel, row=row, answer_type=answer_type,
                                       history=history)
        seq = Sequence(generator, rgb, question, phrase, on_text, started, tag)
        self.sequences.append(seq)
        self.vlm.rows_in_use.add(row)
        return seq

    def step(self) -> List[Sequence]:
        """One token for every sequence, in one decoder call; returns the sequences that ended,
        each with its `answer`, and no longer in the batch. A typed answer whose grammar forces
        tokens after its chosen one runs them in a call of its own (jump-forward: one call, not one
        step per forced token)."""
        running, tokens = [], []
        for seq in self.sequences:
            token = seq.generator.next_token()
            if token is not None and seq.generator.forced:
                t0 = time.perf_counter()
                # A copy: run() returns a view of the output buffer, which the batched step below
                # rewrites for every row up to its last, this one included (as an idle row).
                logits = self.vlm.decoder.run(self.vlm.table[[token] + seq.generator.forced], seq.row).copy()
                seq.generator.feed(logits, time.perf_counter() - t0)
            elif token is not None:
                running.append(seq)
                tokens.append(token)
        if running:
            t0 = time.perf_counter()
            logits = self.vlm.decoder.step([s.row for s in running], self.vlm.table[tokens])
            seconds = time.perf_counter() - t0
            self.decode_tokens += len(running)
            self.decode_s += seconds
            for seq, row_logits in zip(running, logits):
                seq.generator.feed(row_logits, seconds)
        for seq in self.sequences:
            if seq.on_text is not None:
                seq.on_text(seq.generator.text, len(seq.generator.token_ids))
        ended = [s for s in self.sequences if s.generator.is_done()]
        self.sequences = [s for s in self.sequences if not s.generator.is_done()]
        for seq in ended:  # answered first: a closed set is scored in the sequence's own row
            seq.answer = self.vlm.answer(seq.generator, seq.rgb, seq.question, seq.phrase, seq.started)
            self.vlm.rows_in_use.discard(seq.row)
        return ended

    def clear(self) -> List[Sequence]:
        """Drop every sequence without an answer (after an engine failure); returns them."""
        dropped, self.sequences = self.sequences, []
        for seq in dropped:
            self.vlm.rows_in_use.discard(seq.row)
        return dropped
