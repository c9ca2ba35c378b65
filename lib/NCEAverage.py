"""NCE memory bank (the original's `lib.NCEAverage.NCEAverage`).

forward(x, y, idx) returns P = exp(<V[idx], x>/T) / Z, B x (K+1), positive in column 0."""
import torch
import torch.distributed as dist

from . import ops
from .memory import MemoryBank, _world
from .NCECriterion import NCECriterion


class NCEAverage(MemoryBank):
    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5, Z=None, loss="nce", prox=0.0):
        # params = [K, T, Z, momentum]; Z < 0 means "not estimated yet"
        super().__init__(inputSize, outputSize, [K, T, -1 if Z is None else Z, momentum])
        self.K, self.loss_type, self.prox = K, loss, prox

    @property
    def T(self):
        return float(self.params[1])

    @property
    def Z(self):
        return float(self.params[2])

    def sample(self, y):
        """Uniform negatives with replacement, B x (K+1), column 0 replaced by the positive y."""
        # int32 halves the B x (K+1) block (134 MB at K=65536, B=256); N < 2^31 always holds
        idx = torch.randint(self.nLem, (y.shape[0], self.K + 1), device=self.memory.device, dtype=torch.int32)
        idx[:, 0] = y
        return idx

    def scores(self, x, y, idx=None):
        idx = self.sample(y) if idx is None else idx
        s = ops.gather_dot(x, self.memory, idx)  # B x (K+1)
        if self.Z < 0:
            self.estimate_Z(s)
        return s

    @torch.no_grad()
    def estimate_Z(self, s):
        # Z = mean(exp(s/T)) * N on the first batch only, averaged over ranks, then frozen
        z = torch.exp(s.detach().float() / self.T).mean() * self.nLem
        if _world() > 1:
            dist.all_reduce(z)
            z /= _world()
        self.params[2] = z
        print(f"normalization constant Z is set to {float(z):.1f}")

    def forward(self, x, y, idx=None):
        return torch.exp(self.scores(x, y, idx) / self.T) / self.Z

    def loss(self, x, y, idx=None):
        """NCECriterion(N)(self(x, y, idx), y), computed without the intermediate blocks
        (or the cross-entropy over the K+1 scores with `loss='ce'`), plus the optional proximal term."""
        idx = self.sample(y) if idx is None else idx
        if self.loss_type == "ce":
            out = torch.nn.functional.cross_entropy(self.scores(x, y, idx) / self.T, torch.zeros_like(y))
        else:
            if self.Z < 0:
                with torch.no_grad():
                    self.scores(x, y, idx)  # the first batch sets Z
            out = ops.nce_loss(x, self.memory, idx, self.T, self.Z, self.K, self.nLem, NCECriterion.eps)
        return out + self.proximal(x, y)

    def proximal(self, x, y):
        # the paper's proximal term lambda * ||f_i - v_i||^2 (Eq. 11), off by default as in the released code
        if not self.prox:
            return x.new_zeros(())
        return self.prox * (x - self.memory[y]).pow(2).sum(1).mean()
