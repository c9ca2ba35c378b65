"""Kept apart from test_cld.py so that the processes mp.spawn starts import only torch and lib."""
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from lib.LinearAverage import LinearAverage
from lib.methods import NPIDCLD

D64 = torch.float64


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.fc = nn.Linear(12, 6), nn.Linear(6, 4)

    def forward(self, x):
        return F.normalize(self.fc(torch.relu(self.body(x.flatten(1)))), dim=1)


def _rank_step(rank, world, init, out):
    """One NPID+CLD step per rank on its half of the batch, the model under DDP: the group head
    (outside DDP) must end the step identical on both ranks, like the model and the bank."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Tiny().double()
    method = NPIDCLD(LinearAverage(4, 30, 0.1, 0.5), model, 4, 3, 5, 0.2, 1.0).double()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(list(model.parameters()) + list(method.parameters()), lr=0.5)
    g = torch.Generator().manual_seed(1)
    images, y = torch.randn(8, 2, 3, 2, 2, generator=g, dtype=D64), torch.randperm(30, generator=g)[:8]
    half = slice(4 * rank, 4 * rank + 4)
    method(ddp, images[half], y[half]).backward()
    method.update()
    opt.step()
    torch.save({"head": method.group.state_dict(), "model": model.state_dict(), "bank": method.bank.memory},
               os.path.join(out, f"r{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
