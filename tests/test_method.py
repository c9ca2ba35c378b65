"""Each equation of the paper (sections 3.1-3.3: the non-parametric softmax, NCE, the memory bank's
update, the proximal term) against a float64 closed form."""
import math

import pytest
import torch
import torch.nn.functional as F

from lib import ops
from lib.LinearAverage import LinearAverage
from lib.NCEAverage import NCEAverage
from lib.NCECriterion import NCECriterion

torch.set_default_dtype(torch.float32)


def feats(B, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)


def closed_form_nce_loss(x, V, idx, T, Z, N):
    """-(1/B) sum_b [log(P0/(P0+K/N+eps)) + sum_k log((K/N)/(Pk+K/N+eps))], P = exp(<V[idx], x>/T)/Z."""
    K = idx.shape[1] - 1
    P = torch.exp(torch.einsum("bkd,bd->bk", V[idx], x) / T) / Z
    c, eps = K / N, 1e-7
    return -(torch.log(P[:, 0] / (P[:, 0] + c + eps)).sum() + torch.log(c / (P[:, 1:] + c + eps)).sum()) / x.shape[0]


# --- section 2: the bank ------------------------------------------------------------------

@pytest.mark.parametrize("D", [128, 12])
def test_bank_init_uniform_in_range(D):
    torch.manual_seed(0)
    V = NCEAverage(D, 20000, 16).memory
    s = 1 / math.sqrt(D / 3)
    assert V.dtype == torch.float32 and V.shape == (20000, D)
    assert V.min() >= -s and V.max() <= s
    assert V.min() < -0.99 * s and V.max() > 0.99 * s       # fills the range: uniform in [-s, s]
    assert abs(V.mean()) < 0.01 * s                          # centred
    assert abs(V.double().pow(2).sum(1).mean() - 1) < 0.01   # E||v||^2 = 1
    assert not torch.allclose(V.norm(dim=1), torch.ones(20000))  # not normalised


@pytest.mark.parametrize("m", [0.5, 0.0, 0.9])
def test_memory_update_momentum_then_normalise(m):
    bank = LinearAverage(8, 50, 0.1, m).double()
    V0 = bank.memory.clone()
    x, y = feats(5, 8), torch.tensor([3, 7, 0, 49, 12])
    bank.update(x, y)
    assert bank.momentum == pytest.approx(m, abs=1e-7)
    m = bank.momentum  # the value held in the float32 params buffer, as the original kept it
    want = V0.clone()
    want[y] = (m * V0[y] + (1 - m) * x) / (m * V0[y] + (1 - m) * x).norm(dim=1, keepdim=True)
    assert torch.allclose(bank.memory, want, rtol=0, atol=1e-15)
    assert torch.equal(bank.memory[8:12], V0[8:12])  # other rows untouched


def test_default_momentum_and_params_layout():
    nce = NCEAverage(4, 10, 3)
    assert nce.params.tolist() == pytest.approx([3, 0.07, -1, 0.5])  # [K, T, Z, momentum], Z unset
    lin = LinearAverage(4, 10)
    assert lin.params.tolist() == pytest.approx([0.07, 0.5])         # [T, momentum]


def test_update_keeps_first_of_duplicate_indices():
    bank = LinearAverage(4, 10, 0.1, 0.0).double()
    x = feats(3, 4)
    bank.update(x, torch.tensor([2, 5, 2]))
    assert torch.allclose(bank.memory[2], x[0], rtol=0, atol=1e-15)
    assert torch.allclose(bank.memory[5], x[1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("nce", [True, False])
def test_authors_training_loop_updates_the_bank(nce):
    """The authors' loop: out = lemniscate(feature, index); loss = criterion(out, index);
    loss.backward(). Their backward updated the bank after computing the gradient; so does ours."""
    N, D, K, T, m = 50, 8, 6, 0.1, 0.5
    torch.manual_seed(0)
    bank = (NCEAverage(D, N, K, T, m) if nce else LinearAverage(D, N, T, m)).double()
    criterion = NCECriterion(N) if nce else torch.nn.CrossEntropyLoss()
    V = bank.memory.clone()
    x = feats(4, D).requires_grad_()
    y = torch.tensor([3, 7, 11, 40])
    idx = bank.sample(y) if nce else None
    out = bank(x, y, idx) if nce else bank(x, y)
    assert torch.equal(bank.memory, V)  # forward alone does not touch it
    criterion(out, y).backward()
    want = F.normalize(V[y] * m + x.detach() * (1 - m), dim=1)
    assert torch.allclose(bank.memory[y], want, rtol=0, atol=1e-14)
    others = torch.ones(N, dtype=torch.bool)
    others[y] = False
    assert torch.equal(bank.memory[others], V[others])
    # the gradient was the one against the bank before the update
    bank2 = (NCEAverage(D, N, K, T, m) if nce else LinearAverage(D, N, T, m)).double()
    bank2.load_state_dict(bank.state_dict())
    bank2.memory.copy_(V)
    x2 = x.detach().clone().requires_grad_()
    ref = bank2.loss(x2, y, idx) if nce else bank2.loss(x2, y)
    ref.backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-10, atol=1e-14)
    assert torch.equal(bank2.memory, V)  # loss() never updates: the engine calls update()


def test_gradient_uses_bank_before_update():
    """The step's gradient is computed against the memory as it was at forward time; updating the
    bank between forward and backward is refused by autograd's version check."""
    bank = NCEAverage(8, 100, 10, 0.1).double()
    x = feats(4, 8).requires_grad_()
    y = torch.tensor([1, 2, 3, 4])
    loss = bank.loss(x, y)
    bank.update(x.detach(), y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# --- section 3: losses --------------------------------------------------------------------

def test_sampler_uniform_with_replacement_positive_first():
    torch.manual_seed(0)
    N, K, B = 50, 4096, 64
    bank = NCEAverage(4, N, K)
    y = torch.randint(N, (B,))
    idx = bank.sample(y)
    assert idx.shape == (B, K + 1) and torch.equal(idx[:, 0], y)
    counts = torch.bincount(idx[:, 1:].flatten(), minlength=N).double()
    expected = B * K / N
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 100  # 49 dof: the 0.9999 quantile is ~95; a non-uniform sampler is far above
    assert all(len(set(r.tolist())) < K for r in idx[:4, 1:])  # collisions allowed (K >> N)


def test_nce_output_and_Z_estimate():
    N, D, K, T = 300, 16, 20, 0.07
    bank = NCEAverage(D, N, K, T, 0.5).double()
    V = bank.memory.clone()
    x, y = feats(6, D), torch.tensor([0, 5, 9, 100, 200, 299])
    idx = torch.randint(N, (6, K + 1))
    idx[:, 0] = y
    out = bank(x, y, idx)
    E = torch.exp(torch.einsum("bkd,bd->bk", V[idx], x) / T)
    Z = E.mean() * N  # estimated on the first batch
    assert bank.Z == pytest.approx(Z.item(), rel=1e-6)
    assert torch.allclose(out, E / bank.Z, rtol=1e-10)
    # then frozen: a second batch does not change it
    x2 = feats(6, D, seed=1)
    bank(x2, y, idx)
    assert bank.Z == pytest.approx(Z.item(), rel=1e-6)
    assert bank.state_dict()["params"][2] == pytest.approx(Z.item(), rel=1e-6)  # saved with the bank


def test_nce_column_zero_is_positive():
    bank = NCEAverage(8, 40, 5, 0.1).double()
    x, y = feats(3, 8), torch.tensor([4, 8, 15])
    idx = torch.randint(40, (3, 6))
    with pytest.raises(ValueError, match=r"idx\[:, 0\] must equal y"):
        bank(x, y, idx)  # a caller's column 0 that is not the positive would be scored as one
    idx[:, 0] = y
    out = bank(x, y, idx)
    V = bank.memory
    assert torch.allclose(out[:, 1], torch.exp((V[idx[:, 1]] * x).sum(1) / bank.T) / bank.Z)
    with pytest.raises(ValueError, match="must be B x"):
        bank.loss(x, y, idx[:, :3])
    s = bank.scores(x, y)  # sampled internally: column 0 is y
    assert torch.allclose(s[:, 0], (V[y] * x).sum(1))


@pytest.mark.parametrize("N,K,B", [(1000, 64, 16), (200000, 64, 16), (500, 4096, 8)])
def test_nce_loss_and_gradient_closed_form(N, K, B):
    """Criterion, fused loss and gradient against the float64 formula, on the dense and gather paths."""
    D, T = 16, 0.07
    torch.manual_seed(1)
    bank = NCEAverage(D, N, K, T).double()
    x = feats(B, D).requires_grad_()
    y = torch.randint(N, (B,))
    idx = bank.sample(y)
    V = bank.memory.clone()
    ref = NCECriterion(N)(bank.eval()(x, y, idx), y)  # eval: the forward is pure (no update on backward)
    Z = bank.Z
    want = closed_form_nce_loss(x, V, idx, bank.T, Z, N)
    g_want, = torch.autograd.grad(want, x)
    g_ref, = torch.autograd.grad(ref, x)
    fused = bank.loss(x, y, idx)
    g_fused, = torch.autograd.grad(fused, x)
    assert ref.item() == pytest.approx(want.item(), rel=1e-10)
    assert fused.item() == pytest.approx(want.item(), rel=1e-10)
    assert torch.allclose(g_ref, g_want, rtol=1e-8, atol=1e-12)
    assert torch.allclose(g_fused, g_want, rtol=1e-8, atol=1e-12)


def test_nce_criterion_constants():
    """eps = 1e-7 and Pn = 1/N enter exactly as the released code: checked on chosen P."""
    P = torch.tensor([[0.5, 0.01, 0.2]], dtype=torch.float64)
    N = 40
    c = 2 / N
    want = -(math.log(0.5 / (0.5 + c + 1e-7)) + math.log(c / (0.01 + c + 1e-7)) + math.log(c / (0.2 + c + 1e-7)))
    assert NCECriterion(N)(P, torch.tensor([0])).item() == pytest.approx(want, rel=1e-12)
    assert NCECriterion.eps == 1e-7


def test_dense_and_gather_paths_agree(monkeypatch):
    D, N, K, B = 8, 400, 30, 5
    x = feats(B, D).requires_grad_()
    V = F.normalize(torch.randn(N, D, dtype=torch.float64), dim=1)
    idx = torch.randint(N, (B, K + 1))
    w = torch.randn(B, K + 1, dtype=torch.float64)
    res = []
    for dense in (True, False):
        monkeypatch.setattr(ops, "use_dense", lambda *a, d=dense: d)
        out = ops.gather_dot(x, V, idx)
        g, = torch.autograd.grad((out * w).sum(), x)
        res.append((out, g))
    want = torch.einsum("bkd,bd->bk", V[idx], x)
    assert torch.allclose(res[0][0], want) and torch.allclose(res[1][0], want)
    assert torch.allclose(res[0][1], res[1][1]) and torch.allclose(res[0][1], torch.einsum("bk,bkd->bd", w, V[idx]))


@pytest.mark.parametrize("N", [100, 5000])  # dense and gathered scoring
def test_nce_loss_chunking_is_exact(monkeypatch, N):
    bank = NCEAverage(8, N, 50, 0.1).double()
    x, y = feats(12, 8).requires_grad_(), torch.arange(12)
    idx = bank.sample(y)
    a = bank.loss(x, y, idx)
    ga, = torch.autograd.grad(a, x)
    monkeypatch.setattr(ops, "CHUNK_BYTES", 51 * 8 * 5)  # 5 rows a chunk
    b = bank.loss(x, y, idx)
    gb, = torch.autograd.grad(b, x)
    assert a.item() == pytest.approx(b.item(), rel=1e-12) and torch.allclose(ga, gb)


@pytest.mark.parametrize("chunk", [None, 4 * 8 * 7])
def test_full_softmax_closed_form(monkeypatch, chunk):
    """--nce-k 0: logits = f V^T / T (B x N), cross-entropy with target y; also bank-chunked."""
    if chunk:
        monkeypatch.setattr(ops, "CHUNK_BYTES", chunk)
        monkeypatch.setattr(ops, "DENSE_BYTES", chunk)
    N, D, T = 60, 8, 0.1
    bank = LinearAverage(D, N, T).double()
    x, y = feats(8, D).requires_grad_(), torch.randint(N, (8,))
    logits = x @ bank.memory.t() / bank.T
    assert torch.allclose(bank(x, y), logits)
    want = (torch.logsumexp(logits, 1) - logits[torch.arange(8), y]).mean()
    g_want, = torch.autograd.grad(want, x)
    got = bank.loss(x, y)
    g, = torch.autograd.grad(got, x)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert torch.allclose(g, g_want, atol=1e-12)
    assert bank.T == pytest.approx(T, rel=1e-6)


def test_ce_over_sampled_negatives_option():
    bank = NCEAverage(8, 100, 20, 0.1, loss="ce").double()
    x, y = feats(4, 8), torch.tensor([1, 2, 3, 4])
    idx = bank.sample(y)
    s = torch.einsum("bkd,bd->bk", bank.memory[idx], x) / bank.T
    want = (torch.logsumexp(s, 1) - s[:, 0]).mean()
    assert bank.loss(x, y, idx).item() == pytest.approx(want.item(), rel=1e-10)


def test_proximal_term():
    lam = 3.0
    a = NCEAverage(8, 100, 20, 0.1, prox=lam).double()
    b = NCEAverage(8, 100, 20, 0.1).double()
    b.load_state_dict(a.state_dict())
    x, y = feats(4, 8), torch.tensor([1, 2, 3, 4])
    idx = a.sample(y)
    want = lam * (x - a.memory[y]).pow(2).sum(1).mean()
    assert (a.loss(x, y, idx) - b.loss(x, y, idx)).item() == pytest.approx(want.item(), rel=1e-9)


def test_one_training_step_matches_closed_form():
    """A whole engine step: gradient against the old bank, SGD with momentum and weight decay,
    then the bank update with the step's features."""
    from lib.engine import train_one_epoch
    from lib.methods import NPID
    import types

    torch.manual_seed(0)
    N, D, K, T, m = 20, 4, 5, 0.1, 0.5
    lin = torch.nn.Linear(6, D).double()
    model = torch.nn.Sequential(lin, torch.nn.Flatten())
    model.forward = lambda inp: F.normalize(lin(inp), dim=1)
    bank = NCEAverage(D, N, K, T, m).double()
    bank.params[2] = 7.0  # a known Z
    imgs = torch.randn(3, 6, dtype=torch.float64)
    y = torch.tensor([4, 0, 11])
    idx = bank.sample(y)
    V0, W0, b0 = bank.memory.clone(), lin.weight.detach().clone(), lin.bias.detach().clone()
    f = F.normalize(imgs @ W0.t() + b0, dim=1)
    Wr, br = W0.clone().requires_grad_(), b0.clone().requires_grad_()
    loss = closed_form_nce_loss(F.normalize(imgs @ Wr.t() + br, dim=1), V0, idx, T, 7.0, N)
    gW, gb = torch.autograd.grad(loss, (Wr, br))
    lr, wd = 0.03, 5e-4
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    bank.sample = lambda yy: idx  # the same negatives
    args = types.SimpleNamespace(iter_size=1, print_freq=1, channels_last=False, checkpoint_dir=".")
    train_one_epoch(model, NPID(bank), [(imgs, None, y)], opt, 0, args, torch.device("cpu"))
    assert torch.allclose(lin.weight, W0 - lr * (gW + wd * W0))  # first SGD step: buffer = grad
    assert torch.allclose(lin.bias, b0 - lr * (gb + wd * b0))
    want = V0.clone()
    want[y] = F.normalize(m * V0[y] + (1 - m) * f, dim=1)
    assert torch.allclose(bank.memory, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nce", [True, False])
def test_authors_loop_updates_once_under_autocast_and_retain_graph(nce):
    """Under bf16 the scores see a copy of the bank, so autograd's version check cannot stop a
    second backward: the update itself must run once per forward."""
    N, D, K, T, m = 40, 8, 5, 0.1, 0.5
    torch.manual_seed(0)
    bank = NCEAverage(D, N, K, T, m) if nce else LinearAverage(D, N, T, m)
    criterion = NCECriterion(N) if nce else torch.nn.CrossEntropyLoss()
    w = torch.randn(D, D, requires_grad=True)
    y = torch.tensor([1, 2, 3])
    V = bank.memory.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = F.normalize(torch.randn(3, D) @ w, dim=1)
        out = bank(f, y)
    loss = criterion(out.float(), y)
    loss.backward(retain_graph=True)
    once = bank.memory.clone()
    assert not torch.equal(once, V)
    loss.backward()
    assert torch.equal(bank.memory, once)
