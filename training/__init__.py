"""Trainer of the demo model (engines/demo): a small MobileVLM trained on the generated scene world.

Not installed: setup.py packages only `mobilevlm_ros*` and CMakeLists.txt installs only
`mobilevlm_ros/`, so none of this (nor its torch/transformers needs) reaches the robot. Run it
from the repository root:

    python -m training.train --out DIR [--minutes M | --vision-steps N --steps M] [--smoke]

  data.py          scenes -> pixels, dense targets, question/answer text, packed training rows
  model.py         the demo presets, the training-only dense heads, the projector rescale
  losses.py        answer loss, pointer (attention) loss, image-token/word alignment loss
  schedule.py      learning-rate warm-up and cosine decay
  vision_phase.py  phase A: tower and projector on the dense targets
  llm_phase.py     phase B: the whole VLM on question/answer rows, with the curriculum
  quick_eval.py    greedy PyTorch answers on validation scenes while training
  checkpoint.py    the released checkpoint layout, written atomically
  train.py         the command: both phases in order, logging, checkpoints
"""
