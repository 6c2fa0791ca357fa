"""Where training runs: ``--device cpu`` (the default) or ``cuda`` / ``cuda:N``.

Asking for CUDA where there is none is an error with the reason, never a silent fall-back to
the CPU: a paper-preset build that quietly trains on 2 cores would take days.
"""

from __future__ import annotations

import torch


class DeviceUnavailable(RuntimeError):
    """The requested training device does not exist on this machine or in this torch build."""


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device, checked: raises :class:`DeviceUnavailable` with the reason."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceUnavailable(f"--device {name!r}: not a torch device ({exc})") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceUnavailable(f"--device {name!r}: only cpu and cuda[:N] are supported")
    if torch.version.cuda is None:
        raise DeviceUnavailable(
            f"--device {name}: this torch ({torch.__version__}) is a CPU-only build; install a "
            "CUDA build of torch 2.13.0 (see docs/performance.md, GPU path) or use --device cpu"
        )
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"--device {name}: torch {torch.__version__} was built for CUDA {torch.version.cuda} "
            "but finds no usable NVIDIA GPU (driver, CUDA_VISIBLE_DEVICES?); use --device cpu"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    return device
