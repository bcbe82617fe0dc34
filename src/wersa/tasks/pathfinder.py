"""Pathfinder-style images: are the two markers joined by one dashed curve? (generated)

In the spirit of Pathfinder (Linsley et al. 2018), used by Long Range Arena at
32 x 32 (1,024 tokens) and as Path-X at 128 x 128 (16,384 tokens). Every image
holds two *main* curves, ``num_distractors`` distractor curves and two square
markers. In a positive image the markers sit on both ends of the first main curve;
in a negative one, on one end of each main curve. Positives and negatives are drawn
from the same curve distribution, so pixel counts, marker counts and curve lengths
carry no information: the label is decided only by following a curve across the
image. Curves never touch one another (each curve's footprint, markers included,
keeps ``spacing`` pixels from the others), so the label is exactly "the markers lie
in one 8-connected component of the gap-free drawing"; the tests check this.

Pixels are 0 (background) or 255 (ink); the token of a pixel is ``value + 1`` (id 0
is padding), row-major, as in the sequential-image tasks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .base import Task, TaskInfo, TokenDataset, check_positive_int, progress, split_seed
from .registry import register_task

INK = 255


@dataclass
class PathfinderImage:
    """One drawn example. ``image`` and ``solid`` are ``(S, S)`` uint8.

    ``solid`` is the same drawing without the dash gaps (used to verify the label);
    ``markers`` holds the two marker centres as ``(row, col)``.
    """

    image: np.ndarray
    solid: np.ndarray
    label: int
    markers: tuple[tuple[int, int], tuple[int, int]]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a 2-D mask by a ``(2r+1) x (2r+1)`` square."""
    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    s0, s1 = mask.shape
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            out |= padded[dr:dr + s0, dc:dc + s1]
    return out


def _curve_points(rng: np.random.Generator, size: int, length: int, margin: int,
                  curvature: float) -> np.ndarray | None:
    """A smooth random walk of ``length`` unit steps placed inside the image.

    Returns ``(length + 1, 2)`` integer pixels, or ``None`` if the walk is too wide to fit.

    ``floor(p + 0.5)`` of points one step apart differ by at most one pixel per axis,
    so consecutive pixels are 8-connected and a gap-free curve is one component.
    """
    angles = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, curvature, size=length))
    steps = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    shape = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    # Place the curve where it fits instead of rejecting walks that leave the image:
    # the shape is drawn first, then translated uniformly among the positions that fit.
    low, high = shape.min(axis=0), shape.max(axis=0)
    room = (size - 1 - 2 * margin) - (high - low)
    if (room < 1).any():
        return None
    points = shape - low + margin + rng.uniform(0.0, room - 1e-9)
    pixels = np.floor(points + 0.5).astype(np.int64)
    if pixels.min() < margin or pixels.max() > size - 1 - margin:
        return None
    return pixels


def draw_pathfinder(rng: np.random.Generator, size: int, label: int, num_distractors: int,
                    curve_length: int, dash_length: int, gap_length: int, marker_radius: int,
                    spacing: int = 1, curvature: float = 0.25, max_tries: int = 200) -> PathfinderImage:
    """Draw one image with the given ``label`` (1: markers joined by one curve)."""
    num_curves = 2 + num_distractors
    for _ in range(max_tries):
        occupied = np.zeros((size, size), dtype=bool)
        curves: list[np.ndarray] = []
        while len(curves) < num_curves:
            for _ in range(max_tries):
                pts = _curve_points(rng, size, curve_length, marker_radius, curvature)
                if pts is None:
                    continue
                footprint = np.zeros((size, size), dtype=bool)
                footprint[pts[:, 0], pts[:, 1]] = True
                for end in (pts[0], pts[-1]):  # both ends may carry a marker
                    r0, c0 = end
                    footprint[r0 - marker_radius:r0 + marker_radius + 1,
                              c0 - marker_radius:c0 + marker_radius + 1] = True
                if (footprint & occupied).any():
                    continue
                occupied |= _dilate(footprint, spacing)
                curves.append(pts)
                break
            else:
                break  # this layout is too crowded: start the image again
        if len(curves) == num_curves:
            break
    else:
        raise RuntimeError(
            f"pathfinder: could not place {num_curves} non-touching curves of length {curve_length} "
            f"in {size}x{size} px; lower num_distractors or curve_length"
        )
    image = np.zeros((size, size), dtype=np.uint8)
    solid = np.zeros((size, size), dtype=np.uint8)
    period = dash_length + gap_length
    for pts in curves:
        solid[pts[:, 0], pts[:, 1]] = INK
        on = (np.arange(len(pts)) % period) < dash_length
        image[pts[on, 0], pts[on, 1]] = INK
    first, second = curves[0], curves[1]
    ends = (tuple(first[0]), tuple(first[-1])) if label else (tuple(first[0]), tuple(second[0]))
    for r0, c0 in ends:
        for canvas in (image, solid):
            canvas[r0 - marker_radius:r0 + marker_radius + 1, c0 - marker_radius:c0 + marker_radius + 1] = INK
    markers = tuple((int(r), int(c)) for r, c in ends)
    return PathfinderImage(image=image, solid=solid, label=int(label), markers=markers)  # type: ignore[arg-type]


@register_task
class PathfinderTask(Task):
    """Pathfinder-style binary classification on ``image_size**2`` pixel tokens (generated).

    Args:
        image_size: side in pixels: 32 / 64 / 128 give 1k / 4k / 16k tokens.
        num_train, num_validation, num_test: split sizes.
        num_distractors: extra curves (default 2 at 32 px, one more per doubling: 3 at 64, 4 at 128).
        curve_length: steps per curve (default ``0.6 * image_size``).
        curvature: standard deviation of the turn per step, in radians.
        dash_length, gap_length: dash pattern along the curve, in steps.
        marker_radius: markers are ``(2r+1)``-pixel squares (default ``max(1, image_size // 32)``).
        seed: base seed; example ``i`` has label ``i % 2``, so splits are balanced.
        cache_dir: where generated splits are cached.
    """

    name = "pathfinder"
    cache_by_default = True

    def __init__(self, image_size: int = 32, num_train: int = 10_000, num_validation: int = 1_000,
                 num_test: int = 1_000, num_distractors: int | None = None, curve_length: int | None = None,
                 dash_length: int = 3, gap_length: int = 2, marker_radius: int | None = None,
                 curvature: float = 0.25, seed: int = 0, cache_dir: str | os.PathLike | None = None):
        super().__init__(cache_dir)
        check_positive_int(self.name, "image_size", image_size, 16)
        for opt, val in (("num_train", num_train), ("num_validation", num_validation), ("num_test", num_test)):
            check_positive_int(self.name, opt, val, 0)
        if num_distractors is None:
            num_distractors = 2 + max(0, (image_size // 32).bit_length() - 1)
        curve_length = int(0.6 * image_size) if curve_length is None else curve_length
        marker_radius = max(1, image_size // 32) if marker_radius is None else marker_radius
        check_positive_int(self.name, "num_distractors", num_distractors, 0)
        check_positive_int(self.name, "curve_length", curve_length, 2)
        check_positive_int(self.name, "dash_length", dash_length, 1)
        check_positive_int(self.name, "gap_length", gap_length, 0)
        check_positive_int(self.name, "marker_radius", marker_radius, 0)
        if not isinstance(curvature, (int, float)) or not 0 <= curvature < 3.2:
            raise ValueError(f"pathfinder: curvature must be a number of radians in [0, 3.2), got {curvature!r}")
        self.image_size, self.seed = image_size, seed
        self.sizes = {"train": num_train, "validation": num_validation, "test": num_test}
        self.draw_options = {"num_distractors": num_distractors, "curve_length": curve_length,
                             "dash_length": dash_length, "gap_length": gap_length,
                             "marker_radius": marker_radius, "curvature": float(curvature)}
        self.info = TaskInfo(
            name=self.name, kind="classification", vocab_size=257, max_length=image_size ** 2,
            num_classes=2, class_names=("disconnected", "connected"),
            source=f"generated, Pathfinder-style {image_size}x{image_size}",
        )

    def config(self) -> dict:
        return {"image_size": self.image_size, "sizes": self.sizes, "seed": self.seed, **self.draw_options}

    def draw(self, split: str, index: int) -> PathfinderImage:
        """Example ``index`` of ``split`` as an image (the same one the dataset holds)."""
        seed_text = split_seed(self.seed, split, index)
        rng = np.random.default_rng(list(seed_text.encode()))
        return draw_pathfinder(rng, self.image_size, index % 2, **self.draw_options)

    def _build_split(self, split: str) -> TokenDataset:
        n = self.sizes[split]
        tokens = torch.empty(n * self.image_size ** 2, dtype=torch.int16)
        labels = torch.empty(n, dtype=torch.int64)
        for i in progress(range(n), n, f"generate pathfinder {split}"):
            ex = self.draw(split, i)
            flat = torch.from_numpy(ex.image.reshape(-1).astype(np.int16)) + 1
            tokens[i * flat.numel():(i + 1) * flat.numel()] = flat
            labels[i] = ex.label
        offsets = torch.arange(n + 1, dtype=torch.int64) * self.image_size ** 2
        return TokenDataset(tokens, offsets, labels)
