"""The unchanged-frame test: sensor noise is the same scene, a moved object or a lighting step is not."""

from __future__ import annotations

import numpy as np

from mobilevlm_ros.demo import scenes
from mobilevlm_ros.runtime.change import cell_means, scene_changed

THRESHOLD = 8.0  # the node's default change_threshold


def _noisy(rgb: np.ndarray, seed: int, sigma: float = 3.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def test_cell_means_are_the_means_of_each_cell():
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    m = cell_means(rgb)
    assert m.shape == (24, 32, 3)
    np.testing.assert_allclose(m[5, 7], rgb[100:120, 140:160].reshape(-1, 3).mean(0), rtol=1e-6)
    assert cell_means(np.zeros((3, 5, 3), np.uint8)).shape == (3, 5, 3)  # smaller than the grid


def test_sensor_noise_is_the_same_scene():
    base = scenes.make_scene(20_000_000, 640, 480).image
    ref = cell_means(_noisy(base, 0))
    assert not any(scene_changed(cell_means(_noisy(base, s)), ref, THRESHOLD) for s in range(1, 20))


def test_a_moved_object_a_new_object_and_a_lighting_step_are_changes():
    scene = scenes.make_scene(20_000_001, 640, 480)
    ref = cell_means(scene.image)
    x1, y1, x2, y2 = (int(v) for v in scene.objects[0].box)
    moved = scene.image.copy()
    moved[y1:y2, x1:x2] = scene.image[2, 2]  # the object gone (background colour)
    assert scene_changed(cell_means(moved), ref, THRESHOLD)
    small = scene.image.copy()
    small[100:116, 100:116] = (255, 0, 0)  # a 16 x 16 red square appears: under one cell
    assert scene_changed(cell_means(small), ref, THRESHOLD)
    brighter = np.clip(scene.image.astype(int) + 12, 0, 255).astype(np.uint8)
    assert scene_changed(cell_means(brighter), ref, THRESHOLD)
    assert scene_changed(cell_means(scene.image[:, :320]), ref, THRESHOLD)  # another size
