#!/usr/bin/env python3
"""Write the captioning template's data: synthetic captioned images (deterministic, no download, no Pillow).

Each image is 64x64 RGB on a dark grey background with one or two flat shapes (circle, square, triangle) in one of
four colours (red, green, blue, yellow), and one caption:

* one shape (20% of the images, any size): ``a red circle``;
* two shapes of different colours, one big and one small, side by side or stacked: ``a red circle above a blue
  square``. The big shape is always named first, and the relation (``above``, ``below``, ``left of``, ``right of``)
  says where it is relative to the small one, so every caption is determined by its image.

That is 12 one-shape and 432 two-shape captions: far more captions than training images, so the model has to
compose colours, shapes and relations rather than memorize captions.

Output (default: this template's ``data/``):

    images/img_0000.png ... img_0299.png           training images
    rawdata/captions.tsv                            caption<TAB>url per training image
    heldout/images/heldout_0000.png ... _0059.png   held-out images (never trained on)
    heldout/captions.tsv                            caption<TAB>url per held-out image

URLs are ``{base}/images/<name>.png`` and ``{base}/heldout/images/<name>.png`` with base ``--base-url``
(default http://127.0.0.1:8765, the default of ``serve.py``, which serves ``data/`` at that address). For a
server on another port, print the TSV for it instead of writing anything:

    python generate_data.py --tsv --base-url http://127.0.0.1:43123 > captions.tsv
    python generate_data.py --tsv heldout --base-url http://127.0.0.1:43123 > heldout.tsv

The same seed gives the same pixels, captions and (with the same zlib) PNG bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PNGIO = HERE / "model-train" / "captioning" / "steps" / "common" / "pngio.py"
SIZE = 64
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 230), "yellow": (235, 220, 40)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")
DEFAULT_BASE = "http://127.0.0.1:8765"
SETS = {  # name: (folder of the images, file name prefix, tsv path, seed stream)
    "training": ("images", "img_", "rawdata/captions.tsv", 0),
    "heldout": ("heldout/images", "heldout_", "heldout/captions.tsv", 1),
}


def _load_pngio():
    spec = importlib.util.spec_from_file_location("captioning_pngio", PNGIO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    if shape == "circle":  # area pi r^2
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if shape == "square":  # side 1.8 r, area 3.24 r^2 (about a circle's)
        return (np.abs(xs - cx) <= 0.9 * r) & (np.abs(ys - cy) <= 0.9 * r)
    # triangle pointing up: apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r); area 2 r^2
    return (ys >= cy - r) & (ys <= cy + r) & (np.abs(xs - cx) <= (ys - (cy - r)) / 2)


def _colour(rng: np.random.Generator, name: str) -> np.ndarray:
    jitter = rng.integers(-20, 21, size=3)
    return np.clip(np.array(COLOURS[name]) + jitter, 0, 255).astype(np.uint8)


def _inside(cx: float, cy: float, r: float) -> bool:
    return r + 1 <= cx <= SIZE - 2 - r and r + 1 <= cy <= SIZE - 2 - r


def make_scene(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One (64, 64, 3) uint8 image and its caption."""
    grey = int(rng.integers(16, 81))
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = np.clip(grey + rng.integers(-8, 9, size=3), 0, 100)
    colours = list(COLOURS)
    if rng.random() < 0.2:
        colour, shape = colours[rng.integers(4)], SHAPES[rng.integers(3)]
        r = float(rng.integers(5, 13))
        cx, cy = (float(rng.uniform(r + 1, SIZE - 2 - r)) for _ in range(2))
        image[_shape_mask(shape, cx, cy, r)] = _colour(rng, colour)
        return image, f"a {colour} {shape}"
    first, second = rng.choice(4, size=2, replace=False)
    c1, c2 = colours[first], colours[second]
    s1, s2 = SHAPES[rng.integers(3)], SHAPES[rng.integers(3)]
    relation = RELATIONS[rng.integers(4)]
    r1, r2 = float(rng.integers(10, 13)), float(rng.integers(5, 8))
    gap = r1 + r2 + float(rng.integers(3, 9))
    side = float(rng.uniform(-3, 3))
    offset = {"above": (side, gap), "below": (side, -gap), "left of": (gap, side), "right of": (-gap, side)}
    dx, dy = offset[relation]  # the small shape's centre relative to the big one's
    while True:
        cx1, cy1 = (float(rng.uniform(r1 + 1, SIZE - 2 - r1)) for _ in range(2))
        if _inside(cx1 + dx, cy1 + dy, r2):
            break
    image[_shape_mask(s1, cx1, cy1, r1)] = _colour(rng, c1)
    image[_shape_mask(s2, cx1 + dx, cy1 + dy, r2)] = _colour(rng, c2)
    return image, f"a {c1} {s1} {relation} a {c2} {s2}"


def make_set(name: str, count: int, seed: int) -> list[tuple[str, np.ndarray, str]]:
    """(file name, pixels, caption) for each image of a set; each set has its own random stream."""
    folder, prefix, _, stream = SETS[name]
    rng = np.random.default_rng([seed, stream])
    width = max(4, len(str(count - 1)))
    return [(f"{prefix}{i:0{width}d}.png", *make_scene(rng)) for i in range(count)]


def tsv_text(name: str, items, base_url: str) -> str:
    folder = SETS[name][0]
    return "".join(f"{caption}\t{base_url.rstrip('/')}/{folder}/{file}\n" for file, _, caption in items)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_set(out: Path, name: str, items, base_url: str, pngio) -> None:
    folder, prefix, tsv, _ = SETS[name]
    images = out / folder
    wanted = {file for file, _, _ in items}
    for file, pixels, _ in items:
        _write_bytes(images / file, pngio.encode_png(pixels))
    for stale in images.glob(f"{prefix}*.png"):  # left over from a larger run
        if stale.name not in wanted:
            stale.unlink()
    _write_bytes(out / tsv, tsv_text(name, items, base_url).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "data"), help="data folder to write (default: this template's)")
    parser.add_argument("--train", type=int, default=300, help="training images (default 300)")
    parser.add_argument("--heldout", type=int, default=60, help="held-out images (default 60)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--base-url", default=DEFAULT_BASE, help=f"URL prefix in the TSVs (default {DEFAULT_BASE})")
    parser.add_argument("--tsv", nargs="?", const="training", choices=sorted(SETS),
                        help="print this set's TSV for --base-url to stdout and write nothing")
    args = parser.parse_args()
    counts = {"training": args.train, "heldout": args.heldout}
    if min(counts.values()) < 1:
        parser.error("--train and --heldout must be at least 1")
    if args.tsv:
        sys.stdout.write(tsv_text(args.tsv, make_set(args.tsv, counts[args.tsv], args.seed), args.base_url))
        return
    pngio = _load_pngio()
    out = Path(args.out)
    for name in SETS:
        items = make_set(name, counts[name], args.seed)
        write_set(out, name, items, args.base_url, pngio)
        size = sum((out / SETS[name][0] / f).stat().st_size for f, _, _ in items)
        print(f"{name}: {len(items)} images ({size / 1024:.0f} KiB) in {out / SETS[name][0]}, "
              f"captions in {out / SETS[name][2]}")


if __name__ == "__main__":
    main()
