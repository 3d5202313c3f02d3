"""Losses in float32 whatever the caller's autocast.

Under ``torch.autocast`` a matrix product runs in bf16/fp16 even on float32 inputs, so ``z.float() @
z.t()`` is not enough: the logits, their ``logsumexp`` and every hardness derived from them would be
rounded to 8 (bf16) or 11 (fp16) bits of mantissa. Every loss in ``synthkit.losses`` computes inside
:func:`float32` on inputs upcast with ``.float()``; gradients flow back to the inputs in their own dtype.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch


def float32(x: torch.Tensor) -> AbstractContextManager:
    """Autocast off for ``x``'s device type (the body computes in the inputs' dtypes: upcast them)."""
    return torch.autocast(device_type=x.device.type, enabled=False)
