"""An exact copy of a model's weights, to try a training step and undo it."""
from __future__ import annotations

import itertools

import torch


def _tensors(model):
    return itertools.chain(model.named_parameters(), model.named_buffers())


class WeightSnapshot:
    """Every parameter and buffer of ``model`` copied when the snapshot is taken; ``restore()`` writes
    them back in place, bit for bit (tied weights are one parameter, copied once), and drops the
    parameters' gradients."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.saved = {name: t.detach().clone() for name, t in _tensors(model)}

    @torch.no_grad()
    def restore(self) -> None:
        for name, t in _tensors(self.model):
            t.copy_(self.saved[name])
        for p in self.model.parameters():
            p.grad = None


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module) -> list:
    """[class name, parameter count, sum of all parameters]: tells two students apart in a run's settings."""
    params = list(model.parameters())
    return [type(model).__name__, sum(p.numel() for p in params), float(sum(p.double().sum() for p in params))]
