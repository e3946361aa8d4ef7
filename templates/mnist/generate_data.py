#!/usr/bin/env python3
"""Write the mnist template's data bundle from scikit-learn's bundled 8x8 digits (no download needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / "features"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(digits.target))
    rows = np.column_stack([digits.target, digits.data.astype(int)])[order]
    n = len(rows)
    splits = {"training": rows[: int(0.7 * n)], "validation": rows[int(0.7 * n): int(0.85 * n)],
              "test": rows[int(0.85 * n):]}
    for name, part in splits.items():
        folder = Path(args.out) / name
        folder.mkdir(parents=True, exist_ok=True)
        # label first, no header: the kaos mnist layout
        np.savetxt(folder / f"{name}.csv", part, fmt="%d", delimiter=",")
        print(f"{folder / f'{name}.csv'}: {len(part)} rows")


if __name__ == "__main__":
    main()
