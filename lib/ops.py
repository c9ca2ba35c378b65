"""Memory-lean kernels for the bank step. Each is exactly the textbook expression it replaces
(tests compare them in float64); they exist so that K=65536 or N=1.28M fit in a few hundred MB.

Budget: no temporary larger than `CHUNK_BYTES`, so the extra memory of a step is a small multiple
of it plus the B x (K+1) scores themselves."""
import torch
import torch.nn.functional as F

CHUNK_BYTES = 32 * 2**20


def _rows_per_chunk(bytes_per_row):
    return max(1, CHUNK_BYTES // max(1, bytes_per_row))


def use_dense(B, N, K1, D):
    """Score a B x (K+1) index block by one dense B x N product (then pick) or by gathering rows.

    Dense costs B*N*D flops at GEMM speed; gathering moves B*(K+1)*D floats at memory speed,
    roughly 16x slower per element on the machines measured (scripts/bench_bank.py), and the
    dense B x N block must itself fit the chunk budget."""
    return N <= 16 * K1 and B * N * 4 <= CHUNK_BYTES


class _GatherDot(torch.autograd.Function):
    """out[b, k] = <x[b], memory[idx[b, k]]>, gradient for x only; memory and idx are not modified.
    Saving `memory` lets autograd check that no bank update ran between forward and backward."""

    @staticmethod
    def forward(ctx, x, memory, idx):
        B, K1 = idx.shape
        N, D = memory.shape
        dense = use_dense(B, N, K1, D)
        if dense:
            out = (x @ memory.t()).gather(1, idx)  # B x N -> B x (K+1)
        else:
            out = x.new_empty(B, K1)
            step = _rows_per_chunk(K1 * D * memory.element_size())
            for s in range(0, B, step):
                w = memory[idx[s:s + step]]  # b x (K+1) x D
                out[s:s + step] = torch.bmm(w, x[s:s + step].unsqueeze(2)).squeeze(2)
        ctx.dense = dense
        ctx.save_for_backward(memory, idx)
        return out

    @staticmethod
    def backward(ctx, grad):  # grad: B x (K+1)
        memory, idx = ctx.saved_tensors
        if ctx.dense:
            g = grad.new_zeros(grad.shape[0], memory.shape[0]).scatter_add_(1, idx, grad)
            return g @ memory, None, None
        # sum_k grad[b, k] * memory[idx[b, k]] without materialising the B x (K+1) x D block
        return F.embedding_bag(idx, memory, per_sample_weights=grad, mode="sum"), None, None


def gather_dot(x, memory, idx):
    """B x (K+1) inner products of x (B x D) with the bank rows idx (B x (K+1))."""
    return _GatherDot.apply(x, memory.to(x.dtype), idx)


class _NCELoss(torch.autograd.Function):
    """The NCE criterion evaluated straight from the scores s = <v, f> (B x (K+1)):
    P = exp(s/T)/Z, c = K/N,
    loss = -(1/B) sum_b [log(P_b0/(P_b0 + c + eps)) + sum_{k>=1} log(c/(P_bk + c + eps))].
    Only s is kept for backward, so K=65536 costs two B x (K+1) blocks, not six."""

    @staticmethod
    def forward(ctx, s, T, Z, c, eps):
        B = s.shape[0]
        step = _rows_per_chunk(s.shape[1] * 4)
        total = s.new_zeros((), dtype=torch.float64)
        for a in range(0, B, step):
            p = s[a:a + step].div(T).exp_().div_(Z)
            den = p.add(c + eps).log_()
            total += (p[:, 0].log() - den[:, 0]).sum(dtype=torch.float64)
            total += (torch.log(torch.as_tensor(c, dtype=p.dtype)) - den[:, 1:]).sum(dtype=torch.float64)
        ctx.save_for_backward(s)
        ctx.consts = (T, Z, c, eps)
        return (-total / B).to(s.dtype)

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        T, Z, c, eps = ctx.consts
        B = s.shape[0]
        # d/ds log(P/(P+a)) = (1 - P/(P+a))/T ; d/ds log(c/(P+a)) = -(P/(P+a))/T ; a = c + eps
        grad = s.div(T).exp_().div_(Z)
        grad.div_(grad + (c + eps))
        grad[:, 0].sub_(1.0)
        grad.mul_(g / (B * T))
        return grad, None, None, None, None


def nce_loss(s, T, Z, K, N, eps=1e-7):
    return _NCELoss.apply(s, float(T), float(Z), float(K) / float(N), eps)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """mean_b CE(x_b memory^T / T, y_b) over bank chunks: the B x N logits never exist at once."""

    @staticmethod
    def forward(ctx, x, memory, y, T):
        B, N = x.shape[0], memory.shape[0]
        step = _rows_per_chunk(B * memory.element_size())
        lse = x.new_full((B,), float("-inf"))
        for a in range(0, N, step):
            lse = torch.logaddexp(lse, torch.logsumexp(x @ memory[a:a + step].t() / T, dim=1))
        target = (x * memory[y]).sum(1) / T
        ctx.save_for_backward(x, memory, y, lse)
        ctx.T = T
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, g):
        x, memory, y, lse = ctx.saved_tensors
        T, (B, N) = ctx.T, (x.shape[0], memory.shape[0])
        step = _rows_per_chunk(B * memory.element_size())
        grad = -memory[y]
        for a in range(0, N, step):
            m = memory[a:a + step]
            grad += torch.exp(x @ m.t() / T - lse[:, None]) @ m  # softmax chunk @ rows
        return grad * (g / (B * T)), None, None, None


def softmax_ce(x, memory, y, T):
    """Cross-entropy of the full non-parametric softmax, dense when the B x N logits are small."""
    memory = memory.to(x.dtype)
    if x.shape[0] * memory.shape[0] * 4 <= CHUNK_BYTES:
        return F.cross_entropy(x @ memory.t() / T, y)
    return _ChunkedSoftmaxCE.apply(x, memory, y, float(T))
