"""The image feature extractor: deterministic, hand-crafted, no pretrained weights.

Pachyderm's captioning tutorial runs a pretrained CNN over every image; this template replaces it with a classic
region descriptor that needs no download (in the spirit of the "bottom-up" region features of captioning
models, which describe the K most salient regions of an image):

1. every pixel is quantized to one of 8 colour bins by thresholding R, G and B at 128 (the corners of the RGB
   cube: 0 black, 1 blue, 2 green, 3 cyan, 4 red, 5 magenta, 6 yellow, 7 white); the pixels of one bin form a
   colour region;
2. each region is described by 10 statistics: present (0/1), area (fraction of the image), centroid x and y,
   spread x and y (standard deviations), the x-y correlation, bounding-box width and height, and fill (area /
   bounding-box area: ~1 for a square, ~0.79 for a circle, ~0.5 for a triangle);
3. the vector is the ``REGIONS`` = 4 largest regions, largest first (ties: lower bin first), each as its colour
   bin one-hot (8 values) followed by its 10 statistics: 4 x 18 = 72 float32 values. On a plain background the
   first region is the background and the next ones are the objects, biggest first.

Coordinates are fractions of the image size, so any image size works. Two objects of the same colour bin form
one region (the template's data never uses a colour twice in an image). ``VERSION`` names this layout; datasets
and models record it, and predict refuses a model trained on another version.
"""

from __future__ import annotations

import numpy as np

from . import pngio

VERSION = "rgb8-regions4-v1"
BINS = 8
REGIONS = 4
BLOB_STATS = ("present", "area", "cx", "cy", "sx", "sy", "corr", "width", "height", "fill")
DIM = REGIONS * (BINS + len(BLOB_STATS))  # 72
THRESHOLD = 128


def quantize(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int array of colour bins 0..7 from (H, W, 3) uint8 pixels."""
    bits = (np.asarray(rgb) >= THRESHOLD).astype(np.int64)
    return bits[:, :, 0] * 4 + bits[:, :, 1] * 2 + bits[:, :, 2]


def region_stats(rgb: np.ndarray) -> np.ndarray:
    """(BINS, 10) float64: the statistics of each colour bin's region (all zero where the bin is absent)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    flat = quantize(rgb).ravel()
    ys, xs = (a.ravel() for a in np.mgrid[0:height, 0:width])
    fx, fy = (xs + 0.5) / width, (ys + 0.5) / height  # pixel centres as fractions of the image
    stats = np.zeros((BINS, len(BLOB_STATS)), np.float64)
    for b in range(BINS):
        mask = flat == b
        n = int(mask.sum())
        if n == 0:
            continue
        x, y = fx[mask], fy[mask]
        sx, sy = float(x.std()), float(y.std())
        corr = float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx > 0 and sy > 0 else 0.0
        box_w = int(xs[mask].max() - xs[mask].min() + 1)
        box_h = int(ys[mask].max() - ys[mask].min() + 1)
        stats[b] = (1.0, n / (height * width), x.mean(), y.mean(), sx, sy, corr,
                    box_w / width, box_h / height, n / (box_w * box_h))
    return stats


def extract(rgb: np.ndarray) -> np.ndarray:
    """The (DIM,) float32 feature vector of an (H, W, 3) uint8 image."""
    stats = region_stats(rgb)
    order = np.argsort(-stats[:, 1], kind="stable")[:REGIONS]  # largest area first; ties: lower bin first
    parts = []
    for b in order:
        onehot = np.zeros(BINS)
        if stats[b, 0]:
            onehot[b] = 1.0
        parts += [onehot, stats[b]]
    return np.concatenate(parts).astype(np.float32)


def extract_file(path) -> np.ndarray:
    """Features of the PNG file at path."""
    return extract(pngio.read_rgb(path))


def names() -> list[str]:
    """A name per feature, in vector order (for inspection and docs)."""
    colours = ("black", "blue", "green", "cyan", "red", "magenta", "yellow", "white")
    return [f"region{r}.{name}" for r in range(REGIONS) for name in (*(f"is_{c}" for c in colours), *BLOB_STATS)]
