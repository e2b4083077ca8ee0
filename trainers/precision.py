"""Numeric precision of a run: plain fp32, or autocast to bf16 / fp16 with fp32 kept where it must be.

Under ``bf16`` or ``fp16`` the forward passes of the weight step, the architecture step (first and second
order) and the evaluation run under ``torch.autocast``: convolutions and matrix products compute in the low
precision. What autocast leaves alone stays fp32, and the loops keep it that way on purpose:

- parameters (weights and architecture weights) and their gradients, and optimizer state: autocast casts
  copies for the ops, never the parameters;
- the softmax / Max-W weights of the architecture: computed from the fp32 parameters, so fp32 (they are
  multiplied into low-precision activations as 0-dim tensors, which do not promote them);
- batch-norm running statistics: buffers of the fp32 modules;
- the loss: computed outside autocast on ``logits.float()``.

``fp16`` scales the loss with a ``GradScaler`` (its range is too narrow for raw gradients); ``bf16`` has
fp32's range and needs none. ``auto`` is bf16 where the hardware computes it natively (a CPU with
AVX512-BF16 or AMX, a CUDA device of compute capability 8.0 or newer) and fp32 elsewhere.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .config import PRECISIONS

__all__ = ["PRECISIONS", "Precision", "autocast_of", "native_bf16", "resolve_precision"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (so that bf16 is a speed-up, not an emulation)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


@dataclass(frozen=True)
class Precision:
    """A resolved precision (``fp32``, ``bf16`` or ``fp16``) on one kind of device."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> AbstractContextManager[None]:
        """The context the forward passes run in (a no-op for fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.reduced)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16, None otherwise (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def autocast_of(precision: Precision | None) -> AbstractContextManager[None]:
    """The context a forward pass runs in under ``precision``; None, every loop's default, is fp32 (none)."""
    return precision.autocast() if precision is not None else nullcontext()


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """The precision a run on ``device`` uses for the config value ``setting`` (see the module docstring)."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting == "auto":
        setting = "bf16" if native_bf16(device) else "fp32"
    return Precision(setting, device.type)
