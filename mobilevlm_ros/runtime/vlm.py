"""`VLM`: image + question -> answer text and boxes, read top to bottom:

    image -> pixels (image.py) -> image embeddings (vision engine)
    question -> prompt -> token ids (prompt.py, tokenizer.py)
    [text embeddings | image embeddings | text embeddings] -> decoder prefill -> generation loop
    text -> boxes in source-image pixels (grounding.py)
    typed answers: the answer type's hint and grammar (answer_types.py), its mask on every step
    (constraint.py), then the value and its confidence

The vision features and the image part of the prompt are kept for the last image, so a second
question about the same frame costs only its own tokens (one entry per cache row: nothing grows).
With `max_batch` > 1 the decoder holds that many sequences, decoded together (batch.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from . import manifest as mf
from .answer_types import DEFAULT_ANSWER_HINT, AnswerType, value_json
from .batch import Batch
from .constraint import ClosedSet, Constraint, Grammars, GrammarTokenizer, closed_set_probabilities
from .engines import DecoderEngine, VisionEngine
from .errors import EngineError, VLMError
from .generation import GenerationParams, Generator
from .grounding import find_boxes, grounding_phrase, grounding_prompt
from .image import CLIP_MEAN, CLIP_STD, preprocess
from .prompt import (
    DEFAULT_CAPTION_QUESTION,
    IMAGE_TOKEN_INDEX,
    build_prompt,
    check_prompt_length,
    tokenize_prompt,
)
from .sessions import choose_providers, provider_names, trt_cache_dir, without_tensorrt
from .tokenizer import Tokenizer
from .types import Answer, Timings

# Cache rows a VLM may hold; each reserves max_length positions (allocated lazily on the CPU).
MAX_BATCH = 16


@dataclass
class _Prefix:
    """What a decoder cache row starts with, reusable by the next request in that row."""

    head: Optional[tuple] = None  # token ids at the row's first positions
    image: Optional[str] = None  # key of the image that follows them
    used: int = 0  # when a prefill last used the row


@dataclass(frozen=True)
class EncodedPrompt:
    """A question as token ids, split where the image embeddings go."""

    question: str
    head: Tuple[int, ...]  # before the image: the system text, the same for every question
    tail: Tuple[int, ...]  # after it: the question and the assistant's turn

    @property
    def text_tokens(self) -> int:
        return len(self.head) + len(self.tail)


class VLM:
    """A MobileVLM engine directory, loaded. Not thread-safe: one thread drives it (several answers
    at once go through `batch()`)."""

    def __init__(self, engine_dir: str, backend: str = "auto", threads: int = 0, max_length: int = 0,
                 verify: bool = True, profile_prefix: str = "", max_batch: int = 1):
        """max_length: cache positions per sequence; max_batch: sequences decoded together (cache
        rows, `batch()`); profile_prefix: onnxruntime profiles of both engines go to files starting
        so (benchmarks)."""
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH}, got {max_batch}")
        self.manifest = mf.load(engine_dir, verify=verify)
        m = self.manifest.model
        trt_cache = trt_cache_dir(engine_dir, self.manifest.files["vision"]["sha256"])
        providers = choose_providers(self.manifest.target, backend, cache_dir=trt_cache)
        self.tokenizer = self._load("tokenizer", Tokenizer)
        if self.tokenizer.vocab_size > m["vocab_size"]:
            raise EngineError(f"engine file {self.manifest.files['tokenizer']['path']}: "
                              f"{self.tokenizer.vocab_size} tokens, the model has {m['vocab_size']}; "
                              "re-run mobilevlm-export")
        self.vision = self._load("vision", lambda _: VisionEngine(
            self.manifest, providers, threads, profile_prefix and profile_prefix + "vision"))
        self.decoder = self._load("decoder",
                                  lambda _: DecoderEngine(self.manifest, without_tensorrt(providers),
                                                          threads, max_length,
                                                          profile_prefix and profile_prefix + "decoder",
                                                          rows=max_batch))
        # Memory-mapped: only the rows of tokens actually used are ever read. No pickles: it is data.
        self.table = self._load("embeddings", lambda path: np.load(path, mmap_mode="r", allow_pickle=False))
        if (self.table.shape != (m["vocab_size"], m["hidden_size"])
                or self.table.dtype not in (np.float32, np.float16)):
            raise EngineError(f"engine file {self.manifest.files['embeddings']['path']}: {self.table.dtype} "
                              f"{self.table.shape}, manifest says float "
                              f"({m['vocab_size']}, {m['hidden_size']}); re-run mobilevlm-export")
        self.image_size = m["image_size"]
        self.mean = m.get("image_mean", CLIP_MEAN)
        self.std = m.get("image_std", CLIP_STD)
        self.model_id = m.get("id", "")
        self.answer_hint = m.get("answer_hint", DEFAULT_ANSWER_HINT)  # typed questions' short-answer words
        # e.g. "cpu", "cuda", "tensorrt+cuda" (TensorRT runs the vision graph, CUDA the decoder)
        self.backend = "+".join(dict.fromkeys(provider_names(engine.session)[0]
                                              for engine in (self.vision, self.decoder)))
        self.max_batch = max_batch
        self._prefixes = [_Prefix() for _ in range(max_batch)]  # what each cache row starts with
        self._uses = 0  # counts prefills, to find the row used least recently
        self.rows_in_use: set = set()  # rows holding a batch's running sequence (batch.py)
        self._grammars: Optional[Grammars] = None  # made at the first typed answer

    @property
    def grammars(self) -> Grammars:
        """Typed answers' grammars over this engine's vocabulary (built once, on first use)."""
        if self._grammars is None:
            self._grammars = Grammars(GrammarTokenizer(self.tokenizer.processor, self.tokenizer.path))
        return self._grammars

    def _load(self, role: str, load):
        """load(path of the file of `role`); any failure is one EngineError that names the file."""
        try:
            return load(self.manifest.path(role))
        except VLMError:
            raise
        except Exception as e:  # numpy, sentencepiece and onnxruntime each raise their own types
            raise EngineError(f"engine file {self.manifest.files[role]['path']}: cannot load it "
                              f"({type(e).__name__}: {str(e)[:200]}); re-run mobilevlm-export") from None

    # -- the pipeline ----------------------------------------------------------------------------
    def _embed_ids(self, ids) -> np.ndarray:
        return np.asarray(self.table[list(ids)], dtype=np.float32)

    def _image_key(self, rgb: np.ndarray) -> str:
        # A digest of the pixels: cheap next to the vision engine, and never confuses two frames.
        return hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).hexdigest() + str(rgb.shape)

    def encode_prompt(self, question: Optional[str], max_new_tokens: int,
                      history: Sequence[Tuple[str, str]] = ()) -> EncodedPrompt:
        """`question` (None: the caption question) in the engine's chat template, after the earlier
        turns `history` ((question, answer) each), as token ids. PromptError when the question is not
        acceptable or prompt + image + `max_new_tokens` exceed the context."""
        question = DEFAULT_CAPTION_QUESTION if question is None else question
        prompt = build_prompt(question, self.manifest.model["template"], history)  # checks the questions
        ids = tokenize_prompt(self.tokenizer, prompt)
        check_prompt_length(len(ids) - 1, self.manifest.model["image_tokens"], max_new_tokens,
                            self.decoder.max_length)
        cut = ids.index(IMAGE_TOKEN_INDEX)
        return EncodedPrompt(question.strip(), tuple(ids[:cut]), tuple(ids[cut + 1:]))

    def row_for(self, rgb: np.ndarray, free_rows: List[int]) -> int:
        """Of `free_rows`, the cache row that already holds this frame's image prefix, else the one
        used least recently (a camera's frame stays cached while other cameras are answered)."""
        key = self._image_key(rgb)
        holding = [r for r in free_rows if self._prefixes[r].image == key]
        return holding[0] if holding else min(free_rows, key=lambda r: self._prefixes[r].used)

    def prefill(self, rgb: np.ndarray, prompt: EncodedPrompt, timings: Timings, row: int = 0) -> np.ndarray:
        """Run vision and the decoder over [head | image | tail] in cache row `row`; the logits of
        the first new token.

        The row keeps [head | image] of its last request: the head is the same for every question,
        the image part for every question about the same frame (one entry per row: nothing grows).
        """
        n_image = self.manifest.model["image_tokens"]
        timings.prompt_tokens = prompt.text_tokens + n_image
        key = self._image_key(rgb)
        cached = self._prefixes[row]
        self._uses += 1
        cached.used = self._uses
        if self.decoder.lengths[row] < len(cached.head or ()) + (n_image if cached.image else 0):
            cached.head, cached.image = None, None  # the row was overwritten (decoder.step, a full idle row)
        image_embeds = None
        if key != cached.image or prompt.head != cached.head:
            t0 = time.perf_counter()
            pixels = preprocess(rgb, self.image_size, self.mean, self.std)
            timings.preprocess_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            image_embeds = self.vision(pixels)
            timings.vision_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if prompt.head != cached.head:
            cached.head = cached.image = None  # invalid until the runs below succeed
            self.decoder.rewind(0, row)
            self.decoder.run(self._embed_ids(prompt.head), row)
            cached.head = prompt.head
            timings.prefill_tokens += len(prompt.head)
        if image_embeds is not None:  # image and question in one run: one pass over the weights
            cached.image = None
            self.decoder.rewind(len(prompt.head), row)
            logits = self.decoder.run(np.concatenate([image_embeds, self._embed_ids(prompt.tail)]), row)
            cached.image = key
            timings.prefill_tokens += n_image + len(prompt.tail)
        else:
            self.decoder.rewind(len(prompt.head) + n_image, row)
            logits = self.decoder.run(self._embed_ids(prompt.tail), row)
            timings.prefill_tokens += len(prompt.tail)
        timings.prefill_s = time.perf_counter() - t0
        return logits

    def generator(self, rgb: np.ndarray, question: Optional[str] = None,
                  params: Optional[GenerationParams] = None,
                  cancel: Optional[threading.Event] = None, row: int = 0,
                  answer_type: Optional[AnswerType] = None,
                  history: Sequence[Tuple[str, str]] = ()) -> Generator:
        """Prompt encoding and prefill for `question` (None: a caption) about `rgb` (H x W x 3 uint8
        RGB) in cache row `row`; the Generator that continues from there, constrained to
        `answer_type` (default: free text). `history`: earlier turns of a conversation about the same
        image, (question, answer) each. Bad input raises ImageError / PromptError / AnswerTypeError /
        ValueError, before anything runs."""
        if row in self.rows_in_use:  # e.g. describe() while a batch decodes in row 0
            raise RuntimeError(f"cache row {row} holds a running sequence of a batch")
        params = (params or GenerationParams()).validate()
        answer_type = (answer_type or AnswerType()).check()
        constraint = None
        if answer_type.typed:
            if question is None:
                raise ValueError("a typed answer needs a question")
            alternatives = answer_type.alternatives()
            constraint = (ClosedSet(alternatives, self.grammars.tokenizer.encode, self.tokenizer.eos_id)
                          if alternatives is not None
                          else Constraint(self.grammars.matcher(answer_type, params.max_new_tokens),
                                          self.tokenizer.vocab_size))
            question = answer_type.question(question, self.answer_hint)
        prompt = self.encode_prompt(question, params.max_new_tokens, history)
        timings = Timings()
        logits = self.prefill(rgb, prompt, timings, row)
        return Generator(self.decoder, self.table, self.tokenizer, logits, params, cancel, timings, row,
                         constraint, answer_type, start_length=self.decoder.lengths[row])

    def batch(self) -> Batch:
        """Up to `max_batch` answers decoded together, joining and leaving at any step (batch.py)."""
        return Batch(self)

    def describe(self, rgb: np.ndarray, question: Optional[str] = None,
                 params: Optional[GenerationParams] = None, cancel: Optional[threading.Event] = None,
                 on_text: Optional[Callable[[str, int], None]] = None, phrase: str = "",
                 answer_type: Optional[AnswerType] = None, history: Sequence[Tuple[str, str]] = ()) -> Answer:
        """Answer `question` (None: a caption) about `rgb`: the decode loop, then boxes in `rgb`'s
        pixels. on_text(text so far, tokens) is called after every token; `phrase` labels boxes
        whose answer names none (default: the phrase of a grounding question). With `answer_type`
        the answer is that type's: `Answer.value`, `confidence`, or `error`. `history`: the earlier turns
        of a conversation about `rgb` (a follow-up question)."""
        t_start = time.perf_counter()
        generator = self.generator(rgb, question, params, cancel, answer_type=answer_type, history=history)
        while not generator.is_done():
            generator.generate_next_token()
            if on_text is not None:
                on_text(generator.text, len(generator.token_ids))
        return self.answer(generator, rgb, question, phrase, t_start)

    def answer(self, generator: Generator, rgb: np.ndarray, question: Optional[str], phrase: str,
               t_start: float) -> Answer:
        """The Answer of a finished `generator`: its text, and boxes in `rgb`'s pixels."""
        question = DEFAULT_CAPTION_QUESTION if question is None else question.strip()
        text = generator.text.strip()
        height, width = rgb.shape[:2]
        boxes = find_boxes(text, width, height, default_phrase=phrase or grounding_phrase(question))
        answer = Answer(text=text, prompt=question, boxes=boxes, token_ids=generator.token_ids,
                        finish_reason=generator.finish_reason, timings=generator.timings,
                        image_size=(width, height))
        if generator.answer_type.typed:
            self._typed_value(generator, answer)
        answer.timings.total_s = time.perf_counter() - t_start
        return answer

    def _typed_value(self, generator: Generator, answer: Answer) -> None:
        """The value, confidence and alternatives of a finished typed answer, or its error. A closed
        set is scored in the answer's own cache row (still reserved for it), from the prompt's end."""
        answer_type, constraint = generator.answer_type, generator.constraint
        answer.answer_type = answer_type.kind
        whole = generator.finish_reason in ("complete", "eos") or (
            generator.finish_reason == "length" and constraint.is_accepting())
        if not whole:
            if generator.finish_reason == "length":
                answer.error = (f"the {answer_type.kind} answer was cut at max_new_tokens "
                                f"({generator.params.max_new_tokens}) before it was complete "
                                f"({answer.text[:80]!r}); raise max_new_tokens")
            return
        if answer_type.kind == "boxes":
            answer.value = [{"label": b.phrase, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2,
                             "normalized": list(b.normalized)} for b in answer.boxes]
        else:
            answer.value = answer_type.parse(answer.text)
        answer.value_json = value_json(answer_type, answer.value)
        answer.confidence = generator.probability
        alternatives = answer_type.alternatives()
        if alternatives is not None:
            row, start = generator.row, generator.start_length

            def logits_after(prefix: List[int]) -> np.ndarray:
                self.decoder.rewind(start, row)
                return self.decoder.run(self._embed_ids(prefix), row).copy()

            answer.alternatives = closed_set_probabilities(
                alternatives, self.grammars.tokenizer.encode, self.tokenizer.eos_id,
                generator.choice_logits, logits_after)
            answer.confidence = answer.alternatives[answer.text.strip()]

    def ground(self, rgb: np.ndarray, phrase: str, params: Optional[GenerationParams] = None) -> Answer:
        """Ask for the box of the region `phrase` describes (the LLaVA-1.5 referring-expression prompt)."""
        return self.describe(rgb, grounding_prompt(phrase), params, phrase=phrase.strip())

    def agreement(self, rgb: np.ndarray, question: Optional[str], tokens: List[int]) -> float:
        """Share of positions where this engine's greedy choice equals `tokens`, reading `tokens`
        whatever it chose (teacher-forced): how a quantized engine is compared with fp32's answer."""
        logits = self.generator(rgb, question, GenerationParams(max_new_tokens=len(tokens))).logits
        agree = 0
        for t in tokens:
            agree += int(np.argmax(logits)) == t
            logits = self.decoder.run(self._embed_ids([t]))
        return agree / len(tokens)
