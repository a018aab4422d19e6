"""An ImageNet-style ImageFolder tree of generated JPEGs: root/{train,val}/<class>/<name>.JPEG.

Sizes follow ImageNet's usual photos: most have a 500-pixel long side, the short side 1 to 1.6 times smaller,
three in four landscape. Content is a colour texture summed over octaves (coarse colour fields plus finer
detail, each octave 0.9 of the last's amplitude) with a few flat ellipses and rectangles on top, saved at JPEG
quality 90: about 80 KB per 500-pixel image, against about 110 KB for ImageNet's training photos. Random noise
would compress far worse than photos; flat colour far better. Each image is drawn from its own seed, so a tree
does not depend on how many processes wrote it.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LONG_SIDE, JPEG_QUALITY = 500, 90
DETAIL = 0.9  # amplitude of each octave against the coarser one
VAL_IMAGES = 8  # prepare needs a val/ tree with the same classes; its images are never labelled here


def image_size(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """(width, height): mostly long_side x 1/1..1/1.6 of it, one in five with a shorter long side."""
    long = long_side if rng.random() < 0.8 else int(rng.integers(long_side // 2, long_side + 1))
    short = max(1, int(round(long / rng.uniform(1.0, 1.6))))
    return (long, short) if rng.random() < 0.75 else (short, long)


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """float [H, W, 3]: random colour grids from 3 cells across up to the image's side, bicubic-upsampled and
    summed, each octave DETAIL times the amplitude of the last."""
    total = np.zeros((height, width, 3), np.float32)
    amplitude, cells, side = 1.0, 3, max(width, height)
    while cells < side:
        grid = rng.normal(0, 1, size=(max(2, cells * height // side), max(2, cells * width // side), 3))
        for c in range(3):
            plane = Image.fromarray(grid[..., c].astype(np.float32), mode="F").resize((width, height), Image.BICUBIC)
            total[..., c] += amplitude * np.asarray(plane)
        amplitude *= DETAIL
        cells *= 2
    return total


def synthetic_image(seed: int, long_side: int = LONG_SIDE) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = image_size(rng, long_side)
    image = Image.fromarray(np.clip(128 + 40 * texture(rng, width, height), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x0, y0, x0 + int(rng.integers(2, max(3, width // 2))), y0 + int(rng.integers(2, max(3, height // 2)))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def _write_one(job: tuple[str, int, int]) -> int:
    path, seed, long_side = job
    synthetic_image(seed, long_side).save(path, format="JPEG", quality=JPEG_QUALITY)
    return os.path.getsize(path)


def class_name(c: int) -> str:
    return f"n{c:08d}"  # ImageNet's wnid spelling: sorted names keep the class order


def write_tree(root: Path, images: int, classes: int, *, seed: int = 0, long_side: int = LONG_SIDE,
               workers: int = 1) -> dict:
    """root/train/<class>/*.JPEG (image i in class i % classes) and a VAL_IMAGES val/ tree; every class has its
    folder in both, images or not. Returns the counts and the JPEG bytes written."""
    jobs = []
    for split, count, offset in (("train", images, 0), ("val", min(VAL_IMAGES, images), images)):
        for c in range(classes):
            (root / split / class_name(c)).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{class_name(i % classes)}_{i:08d}.JPEG"
            jobs.append((str(root / split / class_name(i % classes) / name), seed * 10**9 + offset + i, long_side))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        sizes = list(pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (8 * max(1, workers)))))
    train_bytes = sum(sizes[:images])
    return {"root": str(root), "train_images": images, "val_images": len(jobs) - images, "classes": classes,
            "long_side": long_side, "jpeg_quality": JPEG_QUALITY, "train_jpeg_bytes": train_bytes,
            "mean_train_jpeg_bytes": train_bytes / images}
