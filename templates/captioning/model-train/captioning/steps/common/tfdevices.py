"""One log line saying which devices TensorFlow sees, and a warning when leased GPUs are not usable."""

from __future__ import annotations

import os


def log_devices(tf) -> tuple[list[str], list[str]]:
    def short(device):
        return device.name.replace("/physical_device:", "")

    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    leased = "CUDA_VISIBLE_DEVICES unset" if cuda is None else f"CUDA_VISIBLE_DEVICES={cuda!r}"
    devices = tf.config.list_physical_devices()
    gpus = tf.config.list_physical_devices("GPU")
    others = ", ".join(short(d) for d in devices if d.device_type != "GPU") or "none"
    seen = ", ".join(short(g) for g in gpus) or "none"
    print(f"TensorFlow {tf.__version__} devices: {others} | GPUs: {seen} ({leased})", flush=True)
    if cuda and cuda.strip() not in ("", "-1") and not gpus:
        print(f"warning: GPUs were leased ({leased}) but TensorFlow sees none (no CUDA driver or libraries in "
              f"this environment?): running on CPU", flush=True)
    return [short(d) for d in devices], [short(g) for g in gpus]
