"""Calibration data for the decoder's quantizer: sequences like those the robot's decoder reads.

A source is camera frames (each with the questions asked about it, and their answers where known)
and text:
  rosbag        its camera frames, with the node's caption prompt and the questions the bag carries
                (the ROS layer reads it: mobilevlm_ros.ros.player.calibration_frames)
  image folder  every JPEG/PNG in it, with the caption prompt
  text file     windows of its tokens
  default       demo scenes with their caption and grounding questions and true answers, plus the
                package's calibration prose (model/quant/data/calibration_prose.txt: written for it,
                Apache-2.0 like the package, and no evaluation corpus)
Frames become decoder inputs as the runtime builds them: the checkpoint's own vision tower and
projector give the image embeddings, placed where <image> stands in the chat prompt, followed by
the answer (the true one, or else the fp32 model's own greedy answer). Text becomes token windows.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...runtime.errors import CheckpointError
from ...runtime.image import load_image, preprocess
from ...runtime.prompt import DEFAULT_CAPTION_QUESTION, build_prompt, tokenize_prompt

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Half frames, half text: GPTQ of V2-1.7B on 64 samples took 26 minutes on 2 cores (BENCHMARKS.md).
DEFAULT_SAMPLES = 64
DEFAULT_SEQ_LEN = 256
ANSWER_TOKENS = 24  # the fp32 model's answer to a frame without one, as the robot would generate it


@dataclass
class Frame:
    rgb: np.ndarray  # H x W x 3 uint8
    questions: List[Tuple[str, Optional[str]]]  # (question, answer); None: the fp32 model answers


@dataclass
class Source:
    """What calibrates an engine. `sha256` is over the content used (each frame's pixels and
    questions, then the text): for a text file it is the file's own sha256."""

    name: str
    frames: List[Frame] = field(default_factory=list)
    text: str = ""

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for f in self.frames:
            h.update(np.ascontiguousarray(f.rgb).tobytes())
            h.update(repr(f.questions).encode())
        h.update(self.text.encode("utf-8"))
        return h.hexdigest()


@dataclass
class Calibration:
    """Model inputs (dicts a Llama's forward takes, batch 1) and the manifest's record of them."""

    samples: List[Dict[str, torch.Tensor]]
    record: Dict[str, object]


# -- sources ----------------------------------------------------------------------------------------

def prose_text() -> str:
    """The package's calibration prose: scenes described, questions about images answered, how a
    robot looks and answers, in plain English (written for this package, Apache-2.0 like it)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "calibration_prose.txt"),
              encoding="utf-8") as f:
        return f.read()


def default_source(scenes: int = 24) -> Source:
    """Demo scenes with the caption and grounding questions and their true answers, and the
    package's calibration prose. Not the package's docstrings: GPTQ calibrated on such technical text
    scored worse than plain rounding on prose (BENCHMARKS.md, 2026-12-04)."""
    from ...demo.scenes import qa_pairs, sample_scene

    frames = []
    for seed in range(scenes):
        scene = sample_scene(10_000 + seed)  # not the demo model's evaluation seeds
        frames.append(Frame(scene.image, [(q, a) for kind, q, a in qa_pairs(scene, seed)
                                          if kind in ("caption", "ground")]))
    return Source("default (demo scenes + calibration prose)" if frames else "default (calibration prose)",
                  frames, prose_text())


def text_source(path: str) -> Source:
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    if not text.strip():
        raise CheckpointError(f"--calibrate {path}: the file is empty")
    return Source(os.path.basename(path), text=text)


def image_folder_source(path: str) -> Source:
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise CheckpointError(f"--calibrate {path}: no {', '.join(IMAGE_SUFFIXES)} file in the folder")
    frames = [Frame(load_image(os.path.join(path, n)), [(DEFAULT_CAPTION_QUESTION, None)]) for n in names]
    return Source(os.path.basename(os.path.normpath(path)), frames)


def frames_source(name: str, frames: Sequence[Tuple[np.ndarray, Sequence[str]]]) -> Source:
    """Frames with the questions asked about them (a bag's), answered by the fp32 model."""
    if not frames:
        raise CheckpointError(f"--calibrate {name}: no camera frame in it")
    return Source(name, [Frame(rgb, [(DEFAULT_CAPTION_QUESTION, None)] + [(q, None) for q in questions])
                         for rgb, questions in frames])


def is_bag(path: str) -> bool:
    """A rosbag2 bag: a folder with metadata.yaml, or a .db3 / .mcap file."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "metadata.yaml"))
    return path.endswith((".db3", ".mcap"))


def load_source(path: str, read_bag: Callable = None) -> Source:
    """--calibrate PATH: a bag (its frames via `read_bag`, the ROS layer's reader), a folder of
    images, or a text file."""
    if not os.path.exists(path):
        raise CheckpointError(f"--calibrate {path}: does not exist")
    if is_bag(path):
        if read_bag is None:
            raise CheckpointError(f"--calibrate {path}: a bag, and this tool reads no bags")
        try:
            frames = read_bag(path)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"--calibrate {path}: {e}") from None
        return frames_source(os.path.basename(os.path.normpath(path)), frames)
    if os.path.isdir(path):
        return image_folder_source(path)
    return text_source(path)


# -- overlap with an evaluation text ----------------------------------------------------------------

def _word_ngrams(text: str, n: int) -> set:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def overlap(calibration_text: str, evaluation_text: str, n: int = 8) -> float:
    """Share of the calibration text's word n-grams that the evaluation text contains too."""
    calib = _word_ngrams(calibration_text, n)
    return len(calib & _word_ngrams(evaluation_text, n)) / len(calib) if calib else 0.0


# -- samples ----------------------------------------------------------------------------------------

def text_windows(ids: List[int], bos_id: Optional[int], count: int, seq_len: int) -> List[List[int]]:
    """Up to `count` consecutive windows of `seq_len` ids, each after BOS."""
    head = [bos_id] if bos_id is not None else []
    return [head + ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:count]


def _ids_sample(ids: List[int]) -> Dict[str, torch.Tensor]:
    t = torch.tensor([ids])
    return {"input_ids": t, "attention_mask": torch.ones_like(t)}


def _embeds_sample(embeds: torch.Tensor) -> Dict[str, torch.Tensor]:
    # input_ids=None: the Llama reads inputs_embeds, and Olive's check of a sample's keys passes.
    return {"input_ids": None, "inputs_embeds": embeds.float(),
            "attention_mask": torch.ones(embeds.shape[:2], dtype=torch.long)}


def _calibration(source: Source, samples: List[Dict[str, torch.Tensor]], image_samples: int,
                 seq_len: int) -> Calibration:
    """The samples with the manifest's record of them; none is an error."""
    if not samples:
        raise CheckpointError(f"calibration source {source.name}: too short to give one sample of "
                              f"{seq_len} tokens")
    tokens = sum(int(s["attention_mask"].sum()) for s in samples)
    return Calibration(samples, {"name": source.name, "sha256": source.sha256, "samples": len(samples),
                                 "tokens": tokens, "image_samples": image_samples})


def _split(source: Source, n_questions: int, count: int) -> Tuple[int, int]:
    """(image samples, text samples): half each when the source has both, else all of one."""
    if not source.text:
        return min(n_questions, count), 0
    images = min(n_questions, count // 2)
    return images, count - images


@torch.no_grad()
def vlm_calibration(model, tokenizer, source: Source, count: int = DEFAULT_SAMPLES,
                    seq_len: int = DEFAULT_SEQ_LEN, progress: bool = True) -> Calibration:
    """Samples for a MobileVLM checkpoint's decoder: (model: model.reference.MobileVLM, tokenizer:
    runtime.tokenizer.Tokenizer). Frames go through the checkpoint's vision tower and projector."""
    from tqdm.auto import tqdm

    cfg = model.config
    questions = [(f, q, a) for f in source.frames for q, a in f.questions]
    n_images, n_text = _split(source, len(questions), count)
    # Spread the picks over the whole source (a bag's first seconds are not its robot's day).
    picks = [questions[int(i)] for i in np.linspace(0, len(questions) - 1, n_images)] if n_images else []
    samples, seen = [], None
    for frame, question, answer in tqdm(picks, desc="calibration frames", disable=not progress):
        if frame is not seen:  # one vision pass per frame, however many questions (picks come in order)
            seen = frame
            pixels = torch.from_numpy(preprocess(frame.rgb, image_size=cfg.vision["image_size"]))
            image_embeds = model.vision(pixels)
        ids = tokenize_prompt(tokenizer, build_prompt(question))
        if answer is None:
            answer_ids = model.generate(pixels, ids, max_new_tokens=ANSWER_TOKENS)
        else:
            answer_ids = tokenizer.encode(" " + answer, add_bos=False)
        samples.append(_embeds_sample(model.embed(ids + answer_ids, image_embeds)))
    for w in text_windows(tokenizer.encode(source.text, add_bos=False), tokenizer.bos_id, n_text, seq_len):
        samples.append(_ids_sample(w))
    return _calibration(source, samples, n_images, seq_len)


def text_calibration(encode: Callable[[str], List[int]], bos_id: Optional[int], source: Source,
                     count: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN) -> Calibration:
    """Samples for a language model without a vision tower: the source's text only."""
    if source.frames and not source.text:
        raise CheckpointError(f"calibration source {source.name}: images need a MobileVLM checkpoint's "
                              "vision tower; give a text file for a plain language model")
    samples = [_ids_sample(w) for w in text_windows(encode(source.text), bos_id, count, seq_len)]
    return _calibration(source, samples, 0, seq_len)
