"""The environment a measurement ran in, recorded beside every result."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Versions, device, threads and load: enough to judge whether two results compare."""
    device = torch.device(device)
    try:
        load = list(os.getloadavg())
    except OSError:  # not available on every platform
        load = None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "load_avg": load,
        "argv0": os.path.basename(sys.argv[0]) if sys.argv else "",
    }
    if device.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        import wersa

        env["wersa"] = wersa.__version__
    except Exception:  # the environment record must never fail a measurement
        pass
    return env
