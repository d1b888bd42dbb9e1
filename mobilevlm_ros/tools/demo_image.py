"""Write a small non-square test picture (coloured shapes on a plain background) for the demo."""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw


def make(width: int = 320, height: int = 240) -> np.ndarray:
    img = Image.new("RGB", (width, height), (200, 200, 190))
    d = ImageDraw.Draw(img)
    d.ellipse((40, 60, 120, 140), fill=(220, 30, 30))
    d.rectangle((180, 100, 260, 180), fill=(30, 60, 220))
    return np.asarray(img)


def main(argv=None) -> int:
    path = (argv or sys.argv[1:] or ["demo.png"])[0]
    Image.fromarray(make()).save(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
