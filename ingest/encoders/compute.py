"""How the model encoders (`auristream`, `hf:`) run: precision, device copies, reading outputs, pooling.

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


def masked_sums(hidden: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
    """Per row and layer, the sum of the first lengths[row] positions in fp32: [G, len(hidden), D]
    from layers of [G, T, D]. Padding past a row's length never enters, whatever it holds."""
    width = hidden[0].shape[1]
    mask = (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).float()  # [G, T]
    return torch.stack([torch.einsum("gt,gtd->gd", mask, h.float()) for h in hidden], dim=1)


def output_field(out, key: str):
    """`out[key]` / `out.key` of a BatchEncoding, ModelOutput, dict or plain object; None if absent."""
    value = getattr(out, key, None)
    if value is None and isinstance(out, dict):
        value = out.get(key)
    return value
