"""mobilevlm-export: a MobileVLM checkpoint (folder or hub id) -> an engine directory.

  mobilevlm-export mtgv/MobileVLM_V2-1.7B --out engines/v2-1.7b-int4 --precision int4 --target cpu
  mobilevlm-export --synthetic tiny --out /tmp/tiny            # random weights, no download
  mobilevlm-export --synthetic v2-1.7b --checkpoint-only --out /tmp/ckpt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ..runtime.manifest import BLOCK_SIZES, PRECISIONS, TARGETS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-export", description=__doc__.split("\n\n")[0])
    p.add_argument("src", nargs="?", help="checkpoint folder or hub id (e.g. mtgv/MobileVLM_V2-1.7B)")
    p.add_argument("--synthetic", metavar="NAME",
                   help="make a random-weight checkpoint of a preset "
                        "(tiny, tiny-v1, v1-1.7b, v2-1.7b, v1-3b, v2-3b)")
    p.add_argument("--layout", choices=["inside", "separate"], default="",
                   help="synthetic: vision tower inside the checkpoint (V2 default) "
                        "or in a CLIP folder (V1 default)")
    p.add_argument("--checkpoint-only", action="store_true",
                   help="synthetic: write the checkpoint folder to --out and stop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="engine directory to write")
    p.add_argument("--precision", choices=PRECISIONS, default="int4")
    p.add_argument("--target", choices=TARGETS, default="cpu")
    p.add_argument("--block-size", type=int, default=0, choices=BLOCK_SIZES,
                   help="int4/int8: weights per quantization scale "
                        "(default: the precision's measured default)")
    p.add_argument("--quant", metavar="NAME",
                   help="int4/int8: another quantization configuration, named as mobilevlm-quality prints it "
                        "(e.g. \"int4 k-quant block 16, sensitive int8\"; an AutoRound row's name + "
                        "\" (N iters)\": N iterations instead of its 200)")
    p.add_argument("--calibrate", metavar="SRC",
                   help="calibrated configurations (GPTQ, AutoClip, AutoRound): calibrate on a rosbag's "
                        "camera frames (with the caption prompt and the bag's questions), a folder of "
                        "images, or a text file (default: demo scenes and the package's calibration prose)")
    p.add_argument("--answer-hint", help="words appended to typed questions (default: LLaVA's short-answer "
                                         "prompt; '' for none, as the demo engine)")
    p.add_argument("--vision-tower", help="local CLIP folder for checkpoints that do not hold the tower (V1)")
    a = p.parse_args(argv)
    if bool(a.src) == bool(a.synthetic):
        p.error("give either SRC or --synthetic NAME")

    from ..model.export import DEFAULT_QUANT, export, is_calibrated
    from ..model.quant.calibration import load_source
    from ..model.quant.quality import CONFIGS, config_named
    from ..model.synthetic import PRESETS, write_synthetic
    from ..runtime.errors import VLMError

    quant = None
    if a.quant:
        config = config_named(a.quant, a.precision)
        if config is None:
            p.error(f"--quant: {a.precision} configurations are: "
                    + "; ".join(c.name for c in CONFIGS if c.precision == a.precision))
        quant = config.quant
    if a.calibrate and not is_calibrated(DEFAULT_QUANT.get(a.precision) if quant is None else quant):
        example = next(c.name for c in CONFIGS if is_calibrated(c.quant) and c.precision == a.precision)
        p.error(f"--calibrate: give a calibrated configuration too, e.g. --quant {example!r}")
    try:
        calibrate = load_source(a.calibrate, read_bag) if a.calibrate else None
        if a.synthetic:
            if a.synthetic not in PRESETS:
                p.error(f"unknown synthetic model {a.synthetic!r}; known: {', '.join(PRESETS)}")
            if a.checkpoint_only:
                write_synthetic(a.synthetic, a.out, layout=a.layout, seed=a.seed)
                print(f"wrote synthetic checkpoint {a.synthetic} to {a.out}")
                return 0
            with tempfile.TemporaryDirectory(prefix="mobilevlm_ckpt_") as ckpt:
                write_synthetic(a.synthetic, ckpt, layout=a.layout, seed=a.seed)
                export(ckpt, a.out, a.precision, a.target, model_id=f"synthetic/{a.synthetic}",
                       block_size=a.block_size, quant=quant, calibrate=calibrate, answer_hint=a.answer_hint)
        else:
            export(a.src, a.out, a.precision, a.target, vision_tower=a.vision_tower, model_id=a.src,
                   block_size=a.block_size, quant=quant, calibrate=calibrate, answer_hint=a.answer_hint)
    except (VLMError, ValueError, OSError) as e:
        print(f"mobilevlm-export: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote engine to {os.path.abspath(a.out)}")
    return 0


def read_bag(path: str):
    """A bag's frames and questions, read by the ROS layer (rclpy: `make setup`, or a ROS install)."""
    from ..ros.player import calibration_frames

    return calibration_frames(path)


if __name__ == "__main__":
    sys.exit(main())
