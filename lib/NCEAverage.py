"""NCE memory bank (the original's `lib.NCEAverage.NCEAverage`).

forward(x, y, idx) returns P = exp(<V[idx], x>/T) / Z, B x (K+1), positive in column 0; in training
mode its backward also updates the bank (the authors' contract, see MemoryBank). An explicit `idx`
must hold y in column 0."""
import torch
import torch.distributed as dist

from . import ops
from .dist import get_world_size
from .memory import MemoryBank
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

    def indices(self, y, idx=None):
        """B x (K+1) bank rows to score: drawn here, or the caller's, whose column 0 must be y."""
        if idx is None:
            return self.sample(y)
        if tuple(idx.shape) != (y.shape[0], self.K + 1):
            raise ValueError(f"idx must be B x (K+1) = {y.shape[0]} x {self.K + 1}, got {tuple(idx.shape)}")
        if not torch.equal(idx[:, 0].long(), y.long()):
            raise ValueError("idx[:, 0] must equal y: column 0 is scored as the positive")
        return idx

    def scores(self, x, y, idx=None):
        return self._scores(x, self.indices(y, idx))

    def _scores(self, x, idx):
        s = ops.gather_dot(x, self.memory, idx)  # B x (K+1)
        if self.Z < 0:
            self.estimate_Z(s)
        return s

    @torch.no_grad()
    def estimate_Z(self, s):
        # Z = mean(exp(s/T)) * N on the first batch only, averaged over ranks, then frozen
        z = torch.exp(s.detach().float() / self.T).mean() * self.nLem
        if get_world_size() > 1:
            dist.all_reduce(z)
            z /= get_world_size()
        self.params[2] = z
        print(f"normalization constant Z is set to {float(z):.1f}")

    def forward(self, x, y, idx=None):
        x = self._update_after_backward(x, y)  # training mode: the backward updates the bank
        return torch.exp(self.scores(x, y, idx) / self.T) / self.Z

    def loss(self, x, y, idx=None):
        """NCECriterion(N)(self(x, y, idx), y), computed without the intermediate blocks
        (or the cross-entropy over the K+1 scores with `loss='ce'`), plus the optional proximal term.
        Never updates the bank: call update() after backward."""
        idx = self.indices(y, idx)
        if self.loss_type == "ce":
            out = torch.nn.functional.cross_entropy(self._scores(x, idx) / self.T, torch.zeros_like(y))
        else:
            if self.Z < 0:
                with torch.no_grad():
                    self._scores(x, idx)  # the first batch sets Z
            out = ops.nce_loss(x, self.memory, idx, self.T, self.Z, self.K, self.nLem, NCECriterion.eps)
        return out + self.proximal(x, y)

    def proximal(self, x, y):
        # the paper's proximal term lambda * ||f_i - v_i||^2 (Eq. 11), off by default as in the released code
        if not self.prox:
            return x.new_zeros(())
        return self.prox * (x - self.memory[y]).pow(2).sum(1).mean()
