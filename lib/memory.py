"""The memory bank shared by NCEAverage and LinearAverage: init, momentum update, rank sync."""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .dist import broadcast_model, get_world_size


def all_gather_cat(t):
    """Concatenate a tensor over ranks in rank order (identity in one process)."""
    if get_world_size() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


class _UpdateOnBackward(torch.autograd.Function):
    """Identity on the features whose backward updates the bank, as the authors' NCEFunction and
    LinearAverageOp did at the end of their backward: autograd reaches it only once the gradient
    w.r.t. the features is complete, i.e. after the scores' backward has read the old bank."""

    @staticmethod
    def forward(ctx, x, bank, y):
        ctx.bank, ctx.done = bank, False
        ctx.save_for_backward(x, y)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.done:  # once per forward, even through retain_graph and a second backward
            x, y = ctx.saved_tensors
            ctx.bank.update(x, y)
            ctx.done = True
        return grad, None, None


class MemoryBank(nn.Module):
    """N x D bank `memory` (float32 buffer) of per-instance features.

    Subclasses hold their hyper-parameters in the float buffer `params` (the original's layout,
    so the authors' checkpoints map one to one) and define forward / loss.

    Two ways to train with it, each updating the bank once per step after the gradient:
    - the engine's: `loss = bank.loss(f, y)`, `loss.backward()`, then `bank.update(f.detach(), y)`;
      `loss` never touches the bank.
    - the authors': `out = bank(f, y)`, `loss = criterion(out, y)`, `loss.backward()`: in training
      mode, when `f` requires grad, the backward updates the bank itself, as their code did. In
      eval mode (or under no_grad) forward is a pure function of the bank."""

    def __init__(self, inputSize, outputSize, params):
        super().__init__()
        self.nLem = outputSize
        stdv = 1.0 / math.sqrt(inputSize / 3)  # uniform in [-s, s]: E||v||^2 = 1
        self.register_buffer("memory", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("params", torch.tensor(params, dtype=torch.float32))
        self.sync_from_rank0()

    @property
    def momentum(self):
        return float(self.params[-1])

    def sync_from_rank0(self):
        broadcast_model(self)  # the bank's buffers: memory and params

    def _update_after_backward(self, x, y):
        if self.training and torch.is_grad_enabled() and x.requires_grad:
            return _UpdateOnBackward.apply(x, self, y)
        return x

    @torch.no_grad()
    def update(self, x, y):
        """V[y] <- normalize(m V[y] + (1-m) x) with the features of every rank, so all banks agree.

        Call after backward: the step's gradient was computed against the bank before this."""
        x, y = all_gather_cat(x.detach().to(self.memory.dtype)), all_gather_cat(y)
        # an index can occur twice (DistributedSampler pads the last batch); keep its first
        # occurrence so the result does not depend on scatter order, which CUDA leaves undefined
        uniq, inv = torch.unique(y, return_inverse=True)
        pos = torch.arange(len(y), device=y.device)
        first = torch.full_like(uniq, len(y)).scatter_reduce_(0, inv, pos, "amin")
        x, y = x[first], uniq
        m = self.momentum
        self.memory.index_copy_(0, y, F.normalize(self.memory[y] * m + x * (1 - m), dim=1))

    @torch.no_grad()
    def checksum(self):
        """A float64 fingerprint of the bank, equal across ranks iff the banks (almost surely) are."""
        w = torch.arange(1, self.memory.shape[1] + 1, device=self.memory.device, dtype=torch.float64)
        return torch.stack([self.memory.double().sum(), (self.memory.double() @ w).sum()])
