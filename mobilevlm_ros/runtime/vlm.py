"""`VLM`: image + question -> answer text and boxes, read top to bottom:

    image -> pixels (image.py) -> image embeddings (vision engine)
    question -> prompt -> token ids (prompt.py, tokenizer.py)
    [text embeddings | image embeddings | text embeddings] -> decoder prefill -> generation loop
    text -> boxes in source-image pixels (grounding.py)

The vision features and the image part of the prompt are kept for the last image, so a second
question about the same frame costs only its own tokens (one entry: nothing grows).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Iterator, List, Optional

import numpy as np

from . import manifest as mf
from .engines import DecoderEngine, VisionEngine
from .errors import EngineError, VLMError
from .generation import Generation, GenerationParams
from .grounding import find_boxes, grounding_phrase, grounding_prompt
from .image import CLIP_MEAN, CLIP_STD, preprocess
from .prompt import (DEFAULT_CAPTION_QUESTION, IMAGE_TOKEN_INDEX, build_prompt, check_prompt_length, check_question,
                     tokenize_prompt)
from .sessions import choose_providers, provider_names
from .tokenizer import Tokenizer
from .types import Answer, Timings


class Request:
    """One answer in progress: iterate for text pieces; `answer` is complete after the loop."""

    def __init__(self, generation: Generation, answer: Answer, size, default_phrase: str, t_start: float):
        self.generation = generation
        self.answer = answer
        self._size = size
        self._phrase = default_phrase
        self._t_start = t_start

    def __iter__(self) -> Iterator[str]:
        yield from self.generation
        g, a = self.generation, self.answer
        a.text = g.text.strip()
        a.token_ids = g.token_ids
        a.finish_reason = g.finish_reason
        a.boxes = find_boxes(a.text, self._size[0], self._size[1], default_phrase=self._phrase)
        a.timings.decode_s = g.decode_s
        a.timings.new_tokens = len(g.token_ids)
        a.timings.total_s = time.perf_counter() - self._t_start

    def result(self) -> Answer:
        for _ in self:
            pass
        return self.answer


class VLM:
    """A MobileVLM engine directory, loaded. Not thread-safe: one request at a time."""

    def __init__(self, engine_dir: str, backend: str = "auto", threads: int = 0, max_length: int = 0,
                 verify: bool = True):
        self.manifest = mf.load(engine_dir, verify=verify)
        m = self.manifest.model
        providers = choose_providers(self.manifest.target, backend, cache_dir=os.path.join(engine_dir, "trt_cache"))
        self.tokenizer = self._load("tokenizer", Tokenizer)
        if self.tokenizer.vocab_size > m["vocab_size"]:
            raise EngineError(f"engine file {self.manifest.files['tokenizer']['path']}: {self.tokenizer.vocab_size} "
                              f"tokens, the model has {m['vocab_size']}; re-run mobilevlm-export")
        self.vision = self._load("vision", lambda _: VisionEngine(self.manifest, providers, threads))
        self.decoder = self._load("decoder", lambda _: DecoderEngine(self.manifest, providers, threads, max_length))
        # Memory-mapped: only the rows of tokens actually used are ever read. No pickles: it is data.
        self.table = self._load("embeddings", lambda path: np.load(path, mmap_mode="r", allow_pickle=False))
        if self.table.shape != (m["vocab_size"], m["hidden_size"]) or self.table.dtype not in (np.float32, np.float16):
            raise EngineError(f"engine file {self.manifest.files['embeddings']['path']}: {self.table.dtype} "
                              f"{self.table.shape}, manifest says float ({m['vocab_size']}, {m['hidden_size']}); "
                              "re-run mobilevlm-export")
        self.image_size = m["image_size"]
        self.mean = m.get("image_mean", CLIP_MEAN)
        self.std = m.get("image_std", CLIP_STD)
        self.model_id = m.get("id", "")
        self.backend = provider_names(self.decoder.session)[0]
        self._cached_head: Optional[tuple] = None  # token ids at the decoder's first positions
        self._cached_image: Optional[str] = None  # key of the image that follows them

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

    def start(self, rgb: np.ndarray, question: Optional[str] = None, params: Optional[GenerationParams] = None,
              cancel: Optional[threading.Event] = None, default_phrase: str = "") -> Request:
        """Run vision and prefill for `question` (None: a caption) about `rgb` (H x W x 3 uint8 RGB).

        Returns the Request to iterate. Bad input raises ImageError / PromptError / ValueError.
        """
        t_start = time.perf_counter()
        params = (params or GenerationParams()).validate()
        question = DEFAULT_CAPTION_QUESTION if question is None else check_question(question)
        ids = self.prompt_ids(question, params.max_new_tokens)
        cut = ids.index(IMAGE_TOKEN_INDEX)
        head, tail = tuple(ids[:cut]), ids[cut + 1:]
        n_image = self.manifest.model["image_tokens"]
        timings = Timings(prompt_tokens=len(ids) - 1 + n_image)

        # The decoder's cache holds [head | image] from the last request: the head (system text) is
        # the same for every question, the image part for every question about the same frame.
        key = self._image_key(rgb)
        image_embeds = None
        if key != self._cached_image or head != self._cached_head:
            t0 = time.perf_counter()
            pixels = preprocess(rgb, self.image_size, self.mean, self.std)
            timings.preprocess_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            image_embeds = self.vision(pixels)
            timings.vision_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if head != self._cached_head:
            self._cached_head = self._cached_image = None  # invalid until the runs below succeed
            self.decoder.rewind(0)
            self.decoder.run(self._embed_ids(head))
            self._cached_head = head
            timings.prefill_tokens += len(head)
        if image_embeds is not None:  # image and question in one run: one pass over the weights
            self._cached_image = None
            self.decoder.rewind(len(head))
            logits = self.decoder.run(np.concatenate([image_embeds, self._embed_ids(tail)]))
            self._cached_image = key
            timings.prefill_tokens += n_image + len(tail)
        else:
            self.decoder.rewind(len(head) + n_image)
            logits = self.decoder.run(self._embed_ids(tail))
            timings.prefill_tokens += len(tail)
        timings.prefill_s = time.perf_counter() - t0

        default_phrase = default_phrase or grounding_phrase(question)
        answer = Answer(text="", prompt=question, timings=timings, image_size=(rgb.shape[1], rgb.shape[0]))
        generation = Generation(self.decoder, self.table, self.tokenizer, logits, params, cancel)
        return Request(generation, answer, (rgb.shape[1], rgb.shape[0]), default_phrase, t_start)

    def prompt_ids(self, question: str, max_new_tokens: int):
        """Token ids of the prompt for `question` (IMAGE_TOKEN_INDEX where the image goes); PromptError
        when the question is not acceptable or prompt + image + `max_new_tokens` exceed the context."""
        ids = tokenize_prompt(self.tokenizer, build_prompt(question))
        check_prompt_length(len(ids) - 1, self.manifest.model["image_tokens"], max_new_tokens, self.decoder.max_length)
        return ids

    def describe(self, rgb: np.ndarray, question: Optional[str] = None, params: Optional[GenerationParams] = None,
                 cancel: Optional[threading.Event] = None) -> Answer:
        return self.start(rgb, question, params, cancel).result()

    def ground(self, rgb: np.ndarray, phrase: str, params: Optional[GenerationParams] = None) -> Answer:
        """Ask for the box of the region `phrase` describes (the LLaVA-1.5 referring-expression prompt)."""
        return self.start(rgb, grounding_prompt(phrase), params, default_phrase=phrase.strip()).result()

    def agreement(self, rgb: np.ndarray, question: Optional[str], tokens: List[int]) -> float:
        """Share of positions where this engine's greedy choice equals `tokens`, reading `tokens`
        whatever it chose (teacher-forced): how a quantized engine is compared with fp32's answer."""
        req = self.start(rgb, question, GenerationParams(max_new_tokens=len(tokens), ignore_eos=True))
        logits, agree = req.generation.logits, 0
        for t in tokens:
            agree += int(np.argmax(logits)) == t
            logits = self.decoder.run(self._embed_ids([t]))
        return agree / len(tokens)

    def image_embeddings(self, rgb: np.ndarray) -> np.ndarray:
        return self.vision(preprocess(rgb, self.image_size, self.mean, self.std))
