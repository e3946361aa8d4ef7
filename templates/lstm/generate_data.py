#!/usr/bin/env python3
"""Write the lstm template's data bundle: a synthetic, learnable multichannel time series, zipped.

Port of the Kubeflow Pipelines LSTM example, whose first step downloads ``training_dataset.zip`` holding one
``training_dataset.npy``. Here the same zip is generated deterministically (fixed seed, no download):

* ``training_dataset.npy`` is one float32 array of shape ``(N, 101, 3)`` (N = 1200 by default), loadable with
  ``np.load(path)`` (no pickle):
  - ``data[:, :100, :]``: the inputs, 100 timesteps x 3 channels;
  - ``data[:, 100, :]``: the 3 regression targets, the next (noise-free) value of each channel at t = 100.
* Each channel of each sample is ``offset + a1*sin(2*pi*f1*t + p1) + a2*sin(2*pi*f2*t + p2)`` with random
  frequencies, phases, amplitudes and offset, plus Gaussian noise (sigma 0.1) on the inputs only. Predicting the
  next clean value means reading the frequencies and phases from the noisy history: easy for an LSTM, impossible
  for a constant (R^2 of the mean predictor is 0).
* Values are rounded to multiples of 1/1024 (far below the noise), so the zip deflates to about half the raw size.

The zip holds only ``training_dataset.npy`` with fixed timestamps and permissions, so the same seed gives the
same bytes. (The sines are computed in float64 and rounded; on a very different CPU/numpy build an element could
differ in its last bit, which is why the committed zip, not a regeneration, is the template's data.)
"""

from __future__ import annotations

import argparse
import io
import os
import zipfile
from pathlib import Path

import numpy as np

TIMESTEPS = 100
CHANNELS = 3
ARRAY_NAME = "training_dataset.npy"
ZIP_NAME = "training_dataset.zip"


def make_dataset(samples: int = 1200, seed: int = 7, noise: float = 0.1) -> np.ndarray:
    """(samples, TIMESTEPS + 1, CHANNELS) float32: rows 0..99 are the noisy inputs, row 100 the targets."""
    rng = np.random.default_rng(seed)
    t = np.arange(TIMESTEPS + 1, dtype=np.float64)
    freq = rng.uniform(0.01, 0.1, size=(samples, 2, CHANNELS))  # cycles per step: 1 to 10 cycles per window
    amp = np.stack([rng.uniform(0.5, 1.5, size=(samples, CHANNELS)),  # a main component ...
                    rng.uniform(0.0, 0.5, size=(samples, CHANNELS))], axis=1)  # ... and a smaller one
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(samples, 2, CHANNELS))
    offset = rng.uniform(-0.5, 0.5, size=(samples, 1, CHANNELS))
    waves = np.sin(2.0 * np.pi * freq[:, None] * t[None, :, None, None] + phase[:, None])  # (n, T+1, 2, C)
    clean = offset + np.einsum("nkc,ntkc->ntc", amp, waves)
    data = clean.copy()
    data[:, :TIMESTEPS] += rng.normal(0.0, noise, size=(samples, TIMESTEPS, CHANNELS))
    return (np.round(data * 1024.0) / 1024.0).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_zip(array: np.ndarray, path: Path) -> Path:
    """A zip holding only ARRAY_NAME, deflated, with a fixed timestamp (same array -> same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo(ARRAY_NAME, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(info, npy_bytes(array), compresslevel=9)
    os.replace(tmp, path)  # never a half-written zip in the data bundle
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / "timeseries"),
                        help=f"folder that receives {ZIP_NAME} (default: this template's data/timeseries)")
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    data = make_dataset(args.samples, args.seed)
    path = write_zip(data, Path(args.out) / ZIP_NAME)
    print(f"{path}: {ARRAY_NAME} {data.shape} {data.dtype}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
