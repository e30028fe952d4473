"""Where and in what precision the model encoders run: one rule for `auristream` and `hf:`.

`auto` is bf16 autocast on CUDA (the weights stay fp32, matmuls run in bf16) and plain fp32 on
CPU, where bf16 is slow and buys nothing. Batches go to the GPU from pinned host memory so the
copy overlaps with the previous batch's compute.
"""

from __future__ import annotations

import torch

from lake.errors import LakeError

DTYPE_CHOICES = ("auto", "fp32", "float32", "bf16", "bfloat16")


def autocast_dtype(dtype: str, device: torch.device, who: str) -> torch.dtype | None:
    """torch.bfloat16 when the encoder runs under bf16 autocast, None for plain fp32."""
    dtype = str(dtype).lower()
    if dtype not in DTYPE_CHOICES:
        raise LakeError(f"{who}: dtype {dtype!r} not supported; choose auto, fp32 or bf16")
    use_bf16 = dtype in ("bf16", "bfloat16") or (dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if use_bf16 else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of `autocast_dtype`'s answer (disabled for fp32)."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype | None) -> str:
    """As the manifest records it."""
    return "bf16-autocast" if dtype is not None else "fp32"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned host memory lets the copy overlap with compute
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
