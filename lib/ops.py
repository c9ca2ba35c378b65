"""Memory-lean kernels for the bank step. Each is exactly the textbook expression it replaces
(tests compare them in float64); they exist so that K=65536 or N=1.28M fit in a few hundred MB.

Budget: no temporary larger than about `CHUNK_BYTES`, so the extra memory of a step is the index
block, the B x (K+1) scores, and a few chunks."""
import torch
import torch.nn.functional as F

CHUNK_BYTES = 16 * 2**20   # a gathered block, a scatter buffer, a logits slice
DENSE_BYTES = 32 * 2**20   # the largest B x N score block worth computing whole


def _rows(bytes_per_row):
    return max(1, CHUNK_BYTES // max(1, bytes_per_row))


def use_dense(B, N, K1, D):
    """Score a B x (K+1) index block by one dense B x N product (then pick) or by gathering rows.

    Dense costs B*N*D flops at GEMM speed; gathering moves B*(K+1)*D floats at memory speed,
    roughly 16x slower per element on the machines measured (scripts/bench_bank.py), and the
    dense B x N block must itself fit the chunk budget."""
    return N <= 16 * K1 and B * N * 4 <= DENSE_BYTES


def _scores(x, memory, idx, dense):
    """s[b, k] = <x[b], memory[idx[b, k]]>: B x (K+1)."""
    if dense:
        return (x @ memory.t()).gather(1, idx.long())  # B x N -> B x (K+1)
    B, K1 = idx.shape
    out = x.new_empty(B, K1)
    step = _rows(K1 * memory.shape[1] * memory.element_size())
    for a in range(0, B, step):
        w = memory[idx[a:a + step]]  # b x (K+1) x D, one chunk
        out[a:a + step] = torch.bmm(w, x[a:a + step].unsqueeze(2)).squeeze(2)
    return out


def _backproject(g, memory, idx, dense):
    """sum_k g[b, k] * memory[idx[b, k]]: B x D, without the B x (K+1) x D block."""
    B, K1 = idx.shape
    N = memory.shape[0]
    out = g.new_empty(B, memory.shape[1])
    step = _rows(N * g.element_size()) if dense else _rows(K1 * 8)  # 8: embedding_bag's int64 bag map
    for a in range(0, B, step):
        i, w = idx[a:a + step], g[a:a + step]
        if dense:
            out[a:a + step] = w.new_zeros(len(w), N).scatter_add_(1, i.long(), w) @ memory
        else:
            out[a:a + step] = F.embedding_bag(i, memory, per_sample_weights=w, mode="sum")
    return out


class _GatherDot(torch.autograd.Function):
    """out = _scores(x, memory, idx), gradient for x only; memory and idx are not modified.
    Saving `memory` lets autograd check that no bank update ran between forward and backward."""

    @staticmethod
    def forward(ctx, x, memory, idx):
        ctx.dense = use_dense(x.shape[0], memory.shape[0], idx.shape[1], memory.shape[1])
        ctx.save_for_backward(memory, idx)
        return _scores(x, memory, idx, ctx.dense)

    @staticmethod
    def backward(ctx, grad):  # grad: B x (K+1)
        memory, idx = ctx.saved_tensors
        return _backproject(grad, memory, idx, ctx.dense), None, None


def gather_dot(x, memory, idx):
    """B x (K+1) inner products of x (B x D) with the bank rows idx (B x (K+1))."""
    return _GatherDot.apply(x, memory.to(x.dtype), idx)


def _nce_sum(s, T, Z, c, eps):
    """sum_b [log(P_b0/(P_b0 + c + eps)) + sum_{k>=1} log(c/(P_bk + c + eps))], P = exp(s/T)/Z."""
    total = s.new_zeros((), dtype=torch.float64)
    log_c = torch.log(torch.as_tensor(c, dtype=torch.float64))
    step = _rows(s.shape[1] * 4)
    for a in range(0, s.shape[0], step):
        p = s[a:a + step].div(T).exp_().div_(Z)
        den = p.add(c + eps).log_()
        total += (p[:, 0].log() - den[:, 0]).sum(dtype=torch.float64)
        total += log_c * den[:, 1:].numel() - den[:, 1:].sum(dtype=torch.float64)
    return total


def _nce_grad(s, T, Z, c, eps, scale):
    """d/ds of -(1/B) * _nce_sum: (P/(P+a) - [k == 0]) / (B T), a = c + eps."""
    a = c + eps
    g = s.div(T).exp_().div_(Z)                   # P
    g.add_(a).reciprocal_().mul_(-a).add_(1.0)    # P / (P + a), in place
    g[:, 0].sub_(1.0)
    return g.mul_(scale / T)


class _NCEFromBank(torch.autograd.Function):
    """The NCE criterion of NCEAverage's output, straight from x, the bank and the indices:
    loss = -(1/B) sum_b [log(P_b0/(P_b0 + c + eps)) + sum_{k>=1} log(c/(P_bk + c + eps))],
    P = exp(<memory[idx], x>/T)/Z, c = K/N. Only the scores are kept; the backward builds the
    gradient a chunk of rows at a time, so K=65536 costs two B x (K+1) blocks (indices, scores)."""

    @staticmethod
    def forward(ctx, x, memory, idx, T, Z, c, eps):
        ctx.dense = use_dense(x.shape[0], memory.shape[0], idx.shape[1], memory.shape[1])
        s = _scores(x, memory, idx, ctx.dense)
        ctx.save_for_backward(memory, idx, s)
        ctx.consts = (T, Z, c, eps)
        return (-_nce_sum(s, T, Z, c, eps) / x.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        memory, idx, s = ctx.saved_tensors
        B = s.shape[0]
        gx = s.new_empty(B, memory.shape[1])
        step = _rows(s.shape[1] * 8)
        for a in range(0, B, step):
            gs = _nce_grad(s[a:a + step], *ctx.consts, scale=g / B)
            gx[a:a + step] = _backproject(gs, memory, idx[a:a + step], ctx.dense)
        return gx, None, None, None, None, None, None


def nce_loss(x, memory, idx, T, Z, K, N, eps=1e-7):
    """NCECriterion(N)(exp(<memory[idx], x>/T)/Z, .) without the intermediate blocks."""
    return _NCEFromBank.apply(x, memory.to(x.dtype), idx, float(T), float(Z), float(K) / float(N), eps)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """mean_b CE(x_b memory^T / T, y_b) over bank chunks: the B x N logits never exist at once."""

    @staticmethod
    def forward(ctx, x, memory, y, T):
        B, N = x.shape[0], memory.shape[0]
        step = _rows(B * memory.element_size())
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
        step = _rows(B * memory.element_size())
        grad = -memory[y]
        for a in range(0, N, step):
            m = memory[a:a + step]
            grad += torch.exp(x @ m.t() / T - lse[:, None]) @ m  # softmax chunk @ rows
        return grad * (g / (B * T)), None, None, None


def softmax_ce(x, memory, y, T):
    """Cross-entropy of the full non-parametric softmax, dense when the B x N logits are small."""
    memory = memory.to(x.dtype)
    if x.shape[0] * memory.shape[0] * 4 <= DENSE_BYTES:
        return F.cross_entropy(x @ memory.t() / T, y)
    return _ChunkedSoftmaxCE.apply(x, memory, y, float(T))
