"""Full non-parametric softmax bank (the original's `lib.LinearAverage.LinearAverage`)."""

from . import ops
from .memory import MemoryBank


class LinearAverage(MemoryBank):
    def __init__(self, inputSize, outputSize, T=0.07, momentum=0.5, prox=0.0):
        super().__init__(inputSize, outputSize, [T, momentum])  # params = [T, momentum]
        self.prox = prox

    @property
    def T(self):
        return float(self.params[0])

    def forward(self, x, y):
        """B x N logits, the target is y; in training mode the backward updates the bank (the
        authors' contract, see MemoryBank)."""
        x = self._update_after_backward(x, y)
        return x @ self.memory.t() / self.T

    def loss(self, x, y):
        """CrossEntropyLoss()(self(x, y), y), chunked over the bank when B x N is large. Never
        updates the bank: call update() after backward."""
        out = ops.softmax_ce(x, self.memory, y, self.T)
        if self.prox:
            out = out + self.prox * (x - self.memory[y]).pow(2).sum(1).mean()
        return out
