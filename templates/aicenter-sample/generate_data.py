#!/usr/bin/env python3
"""Write the AI Center sample's data bundle from scikit-learn's bundled wine dataset (no download needed)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_wine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / "wine"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    wine = load_wine()
    order = np.random.default_rng(args.seed).permutation(len(wine.target))
    cut = int(0.8 * len(order))
    # AI Center datasets are usually CSVs with a header; the label column is named "target".
    header = [*wine.feature_names, "target"]
    for name, rows in {"training": order[:cut], "test": order[cut:]}.items():
        folder = Path(args.out) / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "wine.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i in rows:
                writer.writerow([f"{v:g}" for v in wine.data[i]] + [int(wine.target[i])])
        print(f"{folder / 'wine.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
