"""Has the scene changed? A cheap test on a coarse grid of cell means, so a static camera can skip
vision and prefill.

Each frame is reduced to the mean colour of GRID cells (24 x 32 for any resolution; 20 x 20 pixels
at 640 x 480). Two frames count as the same scene when no cell's mean moved by `threshold` grey
levels or more in any channel. Cell means average sensor noise away (400 pixels: a noise of 3 grey
levels becomes 0.15), while an object that moves, appears or leaves changes the cells it covers by a
large share of its contrast. Compare against the frame the last caption was computed from, not the
previous frame, so slow drift adds up and is caught.
"""

from __future__ import annotations

import numpy as np

GRID = (24, 32)  # rows, columns


def cell_means(rgb: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) float32 mean colour of each grid cell of an H x W x 3 uint8 frame."""
    h, w = rgb.shape[:2]
    rows, cols = min(GRID[0], h), min(GRID[1], w)
    r = np.linspace(0, h, rows + 1).astype(int)
    c = np.linspace(0, w, cols + 1).astype(int)
    rows_summed = np.add.reduceat(rgb, r[:-1], axis=0, dtype=np.uint32)  # no float copy of the frame
    sums = np.add.reduceat(rows_summed, c[:-1], axis=1, dtype=np.uint32)
    return (sums / (np.diff(r)[:, None, None] * np.diff(c)[None, :, None])).astype(np.float32)


def scene_changed(means: np.ndarray, reference: np.ndarray, threshold: float) -> bool:
    """Whether `means` differs from `reference` (cell_means of two frames) by at least `threshold`
    grey levels in some cell and channel; frames of different sizes always differ."""
    if means.shape != reference.shape:
        return True
    return bool(np.abs(means - reference).max() >= threshold)
