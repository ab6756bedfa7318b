"""Synthetic scenes for the demos and tests: no download, same source for every task.

A scene is a textured background with a few filled shapes (one category per shape kind, random colour, size,
position, partial occlusion). The same renderer gives pretraining images, COCO instance masks, ADE20K-style label
maps and classification images (one large shape, labelled with its kind), so one demo-pretrained encoder transfers to
all three.
Each task's data module writes the scenes in that task's real on-disk format.
"""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from ..files import atomic_write

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar")


@dataclass
class Instance:
    category: int          # index into SHAPES
    mask: np.ndarray       # bool (H, W), visible part after occlusion by later shapes


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour field plus fine noise: texture for the MAE to model, and nothing shape-like."""
    coarse = rng.uniform(40, 200, size=(4, 4, 3))
    ys = np.linspace(0, 3, size)
    y0 = np.floor(ys).astype(int).clip(0, 2)
    t = (ys - y0)[:, None]
    rows = coarse[y0] * (1 - t[..., None]) + coarse[y0 + 1] * t[..., None]            # (size, 4, 3)
    cols = rows[:, y0] * (1 - t.T[..., None]) + rows[:, y0 + 1] * t.T[..., None]      # (size, size, 3)
    return cols + rng.normal(0, 8, size=(size, size, 3))


def _shape_mask(kind: str, size: int, cy: float, cx: float, r: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if kind == "cross":
        w = r * 0.35
        return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    if kind == "bar":
        if rng.random() < 0.5:
            return (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)
        return (np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)
    raise ValueError(kind)


def render_scene(rng: np.random.Generator, size: int = 64, max_shapes: int = 3,
                 min_area: int = 12, radius: Tuple[float, float] = (0.12, 0.3)) -> Tuple[np.ndarray, List[Instance]]:
    """One scene: uint8 image (size, size, 3) and its visible instances (drawn back to front)."""
    image = _background(rng, size)
    masks, cats = [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cat = int(rng.integers(len(SHAPES)))
        r = rng.uniform(*radius) * size
        cy, cx = rng.uniform(r * 0.6, size - r * 0.6, size=2)
        mask = _shape_mask(SHAPES[cat], size, cy, cx, r, rng)
        colour = rng.uniform(0, 255, size=3)
        image[mask] = colour + rng.normal(0, 4, size=(int(mask.sum()), 3))
        masks = [m & ~mask for m in masks]
        masks.append(mask)
        cats.append(cat)
    instances = [Instance(c, m) for c, m in zip(cats, masks) if m.sum() >= min_area]
    return np.clip(image, 0, 255).astype(np.uint8), instances


def render_scenes(n: int, size: int = 64, seed: int = 0, **kwargs):
    """Deterministic sequence of `n` scenes."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield render_scene(rng, size, **kwargs)


def write_demo_images(folder, count: int = 2000, size: int = 64, seed: int = 0) -> Path:
    """Pretraining's demo set: a flat folder of generated JPEG scenes (written once; reused when complete)."""
    folder = Path(folder)
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) >= count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, _) in enumerate(render_scenes(count, size=size, seed=seed)):
        # renamed when whole: a killed run leaves no half image (and no file of an image extension)
        atomic_write(folder / f"scene_{i:05d}.jpg",
                     lambda tmp: Image.fromarray(image).save(tmp, format="JPEG", quality=95))
    return folder


def publish_folder(tmp: Path, root: Path) -> Path:
    """Move the folder `tmp`, written whole, to `root` in one rename, so that `root` is never a half-written set (an
    interrupted writer leaves only its `tmp`). When another process published `root` first (demo sets are
    deterministic, so it is the same set), `tmp` is discarded."""
    try:
        os.replace(tmp, root)
    except OSError:
        if not (root.is_dir() and any(root.iterdir())):
            raise
        shutil.rmtree(tmp)
    return root
