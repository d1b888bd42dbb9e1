"""The trainer's output: a checkpoint in the released MobileVLM layout.

config.json with mm_* keys, model.safetensors with the released tensor names (the tower inside),
clip/ config, tokenizer.model: loadable with mobilevlm_ros.model.loader.load_checkpoint and
exportable with mobilevlm_ros.model.export like a downloaded checkpoint. RunCheckpoints decides
when the language phase writes one (OUT/last) and which is the best so far (OUT/best).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from mobilevlm_ros.model.reference import MobileVLM
from mobilevlm_ros.model.synthetic import clip_config, preprocessor_config, write_tokenizer_config


def save_checkpoint(model: MobileVLM, raw: dict, vision: dict, tokenizer_path: str, out: str,
                    info: dict) -> None:
    """Write the released layout (tower inside model.safetensors, its CLIP config in clip/), atomically."""
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "clip"))
    sd = model.state_dict()
    tensors = {name: sd[ours].detach().to(torch.float32).contiguous()
               for name, ours in model.checkpoint_names().items()}
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    with open(os.path.join(tmp, "clip", "config.json"), "w") as f:
        json.dump(clip_config(vision), f, indent=2)
    with open(os.path.join(tmp, "clip", "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(vision["image_size"]), f, indent=2)
    shutil.copy(tokenizer_path, os.path.join(tmp, "tokenizer.model"))
    write_tokenizer_config(tmp, raw["max_position_embeddings"])
    with open(os.path.join(tmp, "train_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


class RunCheckpoints:
    """OUT/last and OUT/best of one run, each with train_info.json: the run's `info` and its progress.

    after_step writes OUT/last every save_every_s and at the last step, and runs `evaluate` (a
    quick evaluation, None: never) every eval_every_s and at the last step: OUT/best when its mean
    score is at least the best so far. `info` is updated in place (steps, batch, minutes).
    """

    def __init__(self, out: str, model: MobileVLM, raw: dict, vision: dict, tokenizer_path: str, info: dict,
                 *, batch: int, t_start: float, evaluate: Optional[Callable[[], dict]], eval_every_s: float,
                 save_every_s: float, log: Callable[[str], None]):
        self.out, self.model, self.raw, self.vision = out, model, raw, vision
        self.tokenizer_path, self.info, self.batch, self.t_start = tokenizer_path, info, batch, t_start
        self.evaluate, self.eval_every_s, self.save_every_s = evaluate, eval_every_s, save_every_s
        self.log = log
        self.last_eval = self.last_save = time.time()
        self.best = -1.0

    def save(self, name: str, info: dict) -> None:
        path = os.path.join(self.out, name)
        save_checkpoint(self.model, self.raw, self.vision, self.tokenizer_path, path, info)

    def save_last(self, step: int) -> None:
        self.info.update(steps=step, batch=self.batch, minutes=round((time.time() - self.t_start) / 60, 2))
        self.save("last", self.info)

    def after_step(self, step: int, total: int) -> None:
        now = time.time()
        if self.evaluate is not None and (now - self.last_eval > self.eval_every_s or step == total):
            scores = self.evaluate()
            self.log(f"eval @ {step}: {scores}")
            self.last_eval = time.time()
            score = float(np.mean(list(scores.values())))
            if score >= self.best:
                self.best = score
                self.save("best", dict(self.info, steps=step, eval=scores))
        if now - self.last_save > self.save_every_s or step == total:
            self.save_last(step)
            self.last_save = time.time()
