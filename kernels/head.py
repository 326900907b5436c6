"""What every LM-head op shares: the logits transform (torch), input validation, and the temporary
budget of the chunked torch paths.

Logits are z = softcap(logit_scale * (W h + b)), where softcap(x) = c * tanh(x / c) when a cap c is
given (docs/method.md §2.1).
"""
from __future__ import annotations

from typing import Optional

import torch

TEMP_BUDGET = 1 << 24  # elements of a chunked path's fp32 temporaries (64 MiB each)


def transform_logits_(z: torch.Tensor, logit_scale: float, softcap: Optional[float]) -> torch.Tensor:
    """In place: z <- softcap(logit_scale * z)."""
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def check_head_inputs(hidden, weight, targets, bias, logit_scale, softcap, cu_seqlens, ignore_index) -> None:
    """Validates the inputs every LM-head op takes; raises ValueError naming the argument."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or not hidden.is_floating_point():
        raise ValueError(f"hidden: expected a floating tensor [N, d], got {describe(hidden)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight: expected a floating tensor [V, d], got {describe(weight)}")
    n, d = hidden.shape
    v = weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(f"weight: hidden size {weight.shape[1]} does not match hidden's {d}")
    if v == 0:
        raise ValueError("weight: empty vocabulary")
    if not isinstance(targets, torch.Tensor) or targets.shape != (n,) or targets.is_floating_point():
        raise ValueError(f"targets: expected an integer tensor [{n}], got {describe(targets)}")
    for name, t in (("weight", weight), ("targets", targets), ("bias", bias), ("cu_seqlens", cu_seqlens)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name}: on {t.device}, hidden on {hidden.device}")
    if bias is not None and (bias.shape != (v,) or not bias.is_floating_point()):
        raise ValueError(f"bias: expected a floating tensor [{v}], got {describe(bias)}")
    if not (isinstance(logit_scale, (int, float)) and logit_scale > 0):
        raise ValueError(f"logit_scale: expected a positive number, got {logit_scale!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0):
        raise ValueError(f"softcap: expected None or a positive number, got {softcap!r}")
    if n:
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= v))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"targets: targets[{i}] = {int(targets[i])} is outside [0, {v}) and is not "
                             f"ignore_index ({ignore_index})")
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens: expected an int32/int64 tensor [S + 1], got {describe(cu_seqlens)}")
        cu = cu_seqlens.cpu()
        if int(cu[0]) != 0 or int(cu[-1]) != n:
            raise ValueError(f"cu_seqlens: must start at 0 and end at N = {n}, got {int(cu[0])} .. {int(cu[-1])}")
        steps = cu[1:] - cu[:-1]
        if bool((steps < 0).any()):
            i = int((steps < 0).nonzero()[0, 0])
            raise ValueError(f"cu_seqlens: decreases at segment {i}")


def describe(x) -> str:
    """A value as error messages name it: a tensor's shape, dtype and device, or a type."""
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {x.dtype} on {x.device}"
    return type(x).__name__
