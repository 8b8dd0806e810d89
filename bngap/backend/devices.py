"""The devices a check spreads its batches over, and running a batch on one."""

from __future__ import annotations

import contextlib

from ..errors import BngapError
from .selection import active, import_tensorflow


def device_names(requested: int | None = None) -> list[str]:
    """The devices a check spreads its batches over, in order.

    On TensorFlow: `requested` of the accelerators it sees (GPU, TPU;
    default: all of them), else of its logical CPU devices (default: one).
    On JAX and PyTorch the passes run on the backend's default device: more
    than one is refused (the model's variables live on one device there).
    """
    if requested is not None and requested < 1:
        raise BngapError(f"--devices must be at least 1. Received: {requested}")
    name = active()
    if name != "tensorflow":
        if requested not in (None, 1):
            raise BngapError(
                f"--devices {requested}: batches are spread over devices on the TensorFlow "
                f"backend only; on {name} the check runs on one device (use --backend "
                "tensorflow, or leave --devices out)"
            )
        return [f"{name}:default"]
    tf = import_tensorflow()
    accelerators = [d.name for kind in ("GPU", "TPU") for d in tf.config.list_logical_devices(kind)]
    pool = accelerators or [d.name for d in tf.config.list_logical_devices("CPU")]
    if requested is None:
        return accelerators or pool[:1]
    if requested > len(pool):
        kind = "accelerator" if accelerators else "CPU device"
        raise BngapError(
            f"--devices {requested}: only {len(pool)} {kind}(s) visible ({', '.join(pool)})"
        )
    return pool[:requested]


@contextlib.contextmanager
def placed(device: str | None):
    """Runs what is inside on `device` (a name from `device_names`; None:
    where the backend puts it)."""
    if device is not None and active() == "tensorflow" and not device.endswith(":default"):
        tf = import_tensorflow()
        with tf.device(device):
            yield
    else:
        yield
