"""NCE loss with uniform noise Pn = 1/N (the original's `lib.NCECriterion.NCECriterion`)."""
import math

import torch
import torch.nn as nn


class NCECriterion(nn.Module):
    eps = 1e-7

    def __init__(self, nLem):
        super().__init__()
        self.nLem = nLem

    def forward(self, x, targets):
        """x: B x (K+1) probabilities P from NCEAverage (positive in column 0)."""
        B, K = x.shape[0], x.shape[1] - 1
        c = K / float(self.nLem)  # K * Pn
        ln_pmt = torch.log(x[:, 0] / (x[:, 0] + c + self.eps))        # P(origin=model) of the positive
        ln_pon = math.log(c) - torch.log(x[:, 1:] + c + self.eps)     # P(origin=noise) of the negatives
        return -(ln_pmt.sum() + ln_pon.sum()) / B
