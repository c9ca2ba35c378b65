"""The parametric side of the family (issue 18): the paper's parametric softmax (Eq. 1) and PIC's
cosine classifier against float64 closed forms, PIC's sliding-window scheduler, the weight table's
checkpoint and resume, torchrun, and bad input."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import cifar
from conftest import TINY, run_here, run_script
from lib import options
from lib.data import SlidingWindowSampler, window_epochs
from lib.methods import NPID, InstanceClassifier, build_method, instance_logits
from lib.NCEAverage import NCEAverage


def one_line_error(r, msg):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], \
        (r.returncode, r.stderr[-2000:])


# --- the losses against float64 closed forms ---------------------------------------------

def _closed_form(v, W, y, t, cosine):
    """CE of softmax(v u_j / t) with u_j = w_j (Eq. 1) or w_j / |w_j| (PIC), and its gradients, by hand."""
    B = len(y)
    U = W / W.norm(dim=1, keepdim=True) if cosine else W
    s = v @ U.T / t  # B x N
    P = torch.exp(s - s.max(1, keepdim=True).values)
    P = P / P.sum(1, keepdim=True)
    loss = -(s[torch.arange(B), y] - torch.logsumexp(s, 1)).mean()
    D = P.clone()
    D[torch.arange(B), y] -= 1  # dL/ds * B
    gv = D @ U / (t * B)
    gU = D.T @ v / (t * B)  # N x D
    if cosine:  # through u = w/|w|: (I - u u^T) g / |w|
        n = W.norm(dim=1, keepdim=True)
        gW = (gU - U * (gU * U).sum(1, keepdim=True)) / n
    else:
        gW = gU
    return loss, gv, gW


@pytest.mark.parametrize("method,t,cosine", [("parametric", 1.0, False), ("pic", 0.2, True), ("parametric", 0.5, True)])
def test_instance_losses_and_gradients_float64(method, t, cosine):
    g = torch.Generator().manual_seed(1)
    N, D, B = 13, 5, 6
    args = cifar.get_args(["--method", method, "--inst-t", str(t), "--inst-cosine" if cosine else "--no-inst-cosine",
                           "--low-dim", str(D)])
    m = build_method(args, N, None).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(N, D, generator=g, dtype=torch.float64) * 0.7)
    W = m.weight.detach().clone()
    v = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    y = torch.tensor([0, 3, 3, 12, 7, 1])  # a repeated index too
    loss = m(nn.Identity(), v, y)
    loss.backward()
    want, gv, gW = _closed_form(v.detach(), W, y, t, cosine)
    assert loss.dtype == torch.float64 and abs(loss.item() - want.item()) < 1e-12
    assert torch.allclose(v.grad, gv, atol=1e-12) and torch.allclose(m.weight.grad, gW, atol=1e-12)
    bank_before = m.bank.memory.clone()
    m.update()  # the monitor's bank takes the features (NPID's rule); the loss never read it
    assert not torch.equal(bank_before[y], m.bank.memory[y])
    assert torch.equal(bank_before[[2, 4]], m.bank.memory[[2, 4]])


def test_parametric_scores_the_heads_output_before_the_norm():
    # Eq. 1: v = f(x), the head's output; the bank (and kNN) take the normalised feature
    torch.manual_seed(0)
    model = cifar.models.ResNet10(width=8).double()
    args = cifar.get_args(["--method", "parametric"])
    assert args.inst_feature_norm is False and cifar.get_args(["--method", "pic"]).inst_feature_norm is True
    m = build_method(args, 30, model).double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 5, 5, 29])
    model.eval()
    seen = []
    model.fc.register_forward_hook(lambda mod, inp, out: seen.append(out))
    loss = m(model, x, y)
    v = seen[0]  # the head's output, 4 x 128, not of unit norm
    assert abs(v.norm(dim=1) - 1).min() > 1e-3
    assert torch.allclose(loss, F.cross_entropy(v @ m.weight.T, y), atol=1e-12, rtol=0)
    assert torch.allclose(m._step[0], F.normalize(v.float(), dim=1), atol=1e-6)  # the bank takes the normalised one


def test_eq1_is_the_plain_inner_product():
    # t = 1, no normalisation: the logits are w_i^T v, nothing else (a changed constant fails here)
    v, W = torch.randn(3, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    assert torch.allclose(instance_logits(v, W, 1.0, False), v @ W.T, atol=0, rtol=0)
    assert torch.allclose(instance_logits(v, W, 0.2, True), v @ F.normalize(W, dim=1).T / 0.2, atol=1e-15)


def test_defaults_and_inits():
    a = cifar.get_args(["--method", "parametric"])
    assert (a.method, a.inst_t, a.inst_cosine, a.cld) == ("parametric", 1.0, False, False)
    p = cifar.get_args(["--method", "pic"])
    assert (p.inst_t, p.inst_cosine) == (0.2, True)  # PIC.sh --contrast-temperature 0.2, a cosine classifier
    torch.manual_seed(0)
    N, D = 20000, 128
    wp, wc = build_method(a, N, None).weight, build_method(p, N, None).weight
    assert wp.abs().max() <= 1 / math.sqrt(D) and wp.abs().max() > 0.99 / math.sqrt(D)  # nn.Linear's bound
    assert abs(wc.std().item() - 0.01) < 2e-4 and abs(wc.mean().item()) < 1e-4  # normal(0, 0.01), PIC's
    n = cifar.get_args([])
    assert n.method == "npid" and n.inst_t is None and not n.cld and n.window_size == 0
    m = build_method(n, 100, None)
    assert type(m) is NPID and isinstance(m.bank, NCEAverage)  # the paper's default, untouched
    c = cifar.get_args(["--cld"])
    assert (c.method, c.cld) == ("cld", True) and cifar.get_args(["--method", "cld"]).cld
    assert cifar.get_args(["--method", "cld", "--dataset", "cifar100"]).cld_clusters == 200  # CLD's default follows


# --- the sliding window ---------------------------------------------------------------------

def _their_states(n, window, stride, epochs):
    """PIC's sampler's __iter__ (shuffle_per_epoch) with its modulo over all n, the paper's sliding window:
    (start, reshuffles) per epoch. (As released it wraps at the window: test_released_window_is_their_code.)"""
    start, shuffles, out = 0, 0, []
    for _ in range(epochs):
        if start + window > n:
            shuffles += 1
        out.append((start, shuffles))
        start = (start + stride) % n
    return out


def test_window_follows_theirs_covers_and_resumes():
    n, window, stride = 100, 30, 20
    s = SlidingWindowSampler(n, window, stride, seed=3)
    assert [s.state(e) for e in range(12)] == _their_states(n, window, stride, 12)
    seen = set()
    for e in range(12):
        idx = s.indices(e)
        assert len(idx) == window == len(set(idx.tolist())) and len(s) == window
        seen |= set(idx.tolist())
        start, k = s.state(e)
        order = s._perm(k, n, 2**32 - 1)
        assert set(idx.tolist()) == set(order[(torch.arange(window) + start) % n].tolist())  # consecutive in the order
        if e and s.state(e - 1)[1] == k:  # no reshuffle between: the windows overlap by window - stride
            assert len(set(idx.tolist()) & set(s.indices(e - 1).tolist())) == window - stride
    assert len(seen) > window * 2
    c = SlidingWindowSampler(n, 40, 20, seed=3)  # starts 0, 20, 40, 60 in one order, then a reshuffle
    assert [c.state(e)[1] for e in range(5)] == [0, 0, 0, 0, 1]
    assert set().union(*(c.indices(e).tolist() for e in range(4))) == set(range(n))  # every image, once round
    assert not torch.equal(s.indices(0), s.indices(5))  # windows and their orders differ
    s2 = SlidingWindowSampler(n, window, stride, seed=4)
    assert not torch.equal(s.indices(2), s2.indices(2))  # the seed matters
    fresh = SlidingWindowSampler(n, window, stride, seed=3)  # a resumed run: only the epoch is known
    fresh.set_epoch(7)
    assert list(fresh) == s.indices(7).tolist()
    ranks = [SlidingWindowSampler(n, window, stride, 3, 2, r) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(4)
    a, b = (list(r) for r in ranks)
    assert len(a) == len(b) == window // 2 and not set(a) & set(b) and set(a) | set(b) == set(s.indices(4).tolist())


def test_released_window_is_their_code():
    """--window-mode released: PIC:contrast/data/sampler.py as released, whose `np.mod(..., len(self))`
    wraps at `__len__` = window_size: step by step as their __iter__ runs, the window never slides; each
    is the first `window` of a freshly drawn order, and the same images come back when the start is 0."""
    n, window, stride, epochs = 100, 32, 8, 12
    start, shuffles, theirs = 0, 0, []
    for _ in range(epochs):  # their __iter__, with len(self) == window
        if start + window > window:
            shuffles += 1
        theirs.append((start, shuffles))
        start = (start + stride) % window
    r = SlidingWindowSampler(n, window, stride, seed=3, wrap=window)
    assert [r.state(e) for e in range(epochs)] == theirs
    sets = [set(r.indices(e).tolist()) for e in range(epochs)]
    for e in range(epochs):
        start, k = r.state(e)
        assert sets[e] == set(r._perm(k, n, 2**32 - 1)[:window].tolist())  # the order's first `window`
    repeats = [e for e in range(1, epochs) if sets[e] == sets[e - 1]]
    assert repeats == [4, 8]  # start back at 0 every window / stride = 4 windows: no new draw
    assert all(len(sets[e] & sets[e - 1]) < window for e in range(1, epochs) if e not in repeats)
    slide = SlidingWindowSampler(n, window, stride, seed=3)  # the default slides: overlap window - stride
    assert all(len(set(slide.indices(e).tolist()) & set(slide.indices(e - 1).tolist())) == window - stride
               for e in range(1, 8))


def test_window_epochs_rescale_as_theirs():
    class A:
        window_size, window_stride, world_size, epochs, warmup_epochs, cos = 131072, 16384, 1, 200, 5, True
    a = A()
    window_epochs(a, 1281167)  # ImageNet's train set: PIC:main_pretrain.py's math.ceil
    assert (a.epochs, a.warmup_epochs) == (1955, 49)
    from lib.errors import UserError
    c = A()
    c.cos = False  # the step milestones would count windows
    with pytest.raises(UserError, match="goes with --cos"):
        window_epochs(c, 1281167)
    b = A()
    b.window_size = 0
    window_epochs(b, 1281167)
    assert (b.epochs, b.warmup_epochs) == (200, 5)


# --- end to end ---------------------------------------------------------------------------

PIC_RUN = ["-b", "40", "--method", "pic", "--window-size", "120", "--window-stride", "50", "--cos", *TINY]


class _Stop(BaseException):
    pass


def test_pic_window_resume_is_bit_exact(cifar_dir, tmp_path, monkeypatch):
    from lib import engine
    common = ["--data", cifar_dir, *PIC_RUN, "--retrievals", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    # --epochs 2 over 200 images = ceil(2 * 200 / 120) = 4 windows (the window order is drawn again at
    # the third: 100 + 120 > 200); b is stopped after 2 windows (the cosine over the same 4) and resumed
    r = run_script("cifar.py", *common, "--epochs", "2", "--checkpoint-dir", a)
    assert r.returncode == 0 and "= 4 windows of 120" in r.stdout, r.stderr[-2000:]
    real = engine.train_one_epoch

    def stop_at_third(*args, **kw):
        if args[4] == 2:  # epoch 2: the checkpoint of windows 0-1 is saved
            raise _Stop()
        return real(*args, **kw)
    monkeypatch.setattr(engine, "train_one_epoch", stop_at_third)
    with pytest.raises(_Stop):
        cifar.main([str(x) for x in common] + ["--epochs", "2", "--checkpoint-dir", str(b)])
    assert torch.load(b / "checkpoint.pth", weights_only=True)["epoch"] == 2
    r = run_script("cifar.py", *common, "--epochs", "2", "--checkpoint-dir", b)
    assert r.returncode == 0 and "auto-resuming" in r.stdout, r.stderr[-2000:]
    ca, cb = (torch.load(p / "checkpoint.pth", weights_only=True) for p in (a, b))
    assert ca["epoch"] == cb["epoch"] == 4
    assert ca["method_head"]["weight"].shape == (200, 128)  # the weight table is saved
    assert torch.equal(ca["method_head"]["weight"], cb["method_head"]["weight"])
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    assert torch.equal(ca["memory"]["memory"], cb["memory"]["memory"])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert len(sa) == len(list(cifar.models.ResNet10(width=8).parameters())) + 1  # the table has its momentum
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    lines = (a / "log.txt").read_text().splitlines()
    assert len([l for l in lines if '"epoch_time"' in l]) == 4
    # evaluation reads the checkpoint as any other: the 128-d features
    r = run_script("cifar.py", "--data", cifar_dir, *TINY, "--test-only", "--resume", a / "checkpoint.pth")
    assert r.returncode == 0 and "kNN" in r.stdout, r.stderr[-2000:]
    # the released sampler's windows are another run's
    one_line_error(run_script("cifar.py", *common, "--epochs", "2", "--window-mode", "released", "--checkpoint-dir", a),
                   "--window-mode slide -> released")


def test_default_run_is_npid_explicit_or_not(cifar_dir, tmp_path):
    common = ["--data", cifar_dir, "-b", "40", "--nce-k", "16", *TINY, "--epochs", "1", "--retrievals", "0"]
    assert run_script("cifar.py", *common, "--checkpoint-dir", tmp_path / "a").returncode == 0
    assert run_script("cifar.py", *common, "--method", "npid", "--window-size", "0",
                      "--checkpoint-dir", tmp_path / "b").returncode == 0
    ca, cb = (torch.load(tmp_path / p / "checkpoint.pth", weights_only=True) for p in "ab")
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    assert torch.equal(ca["memory"]["memory"], cb["memory"]["memory"]) and not ca.get("method_head")


@pytest.mark.parametrize("flags,msg", [
    (["--method", "pic", "--nce-k", "16"], "--nce-k: NPID's flags"),
    (["--method", "parametric", "--nce-loss", "ce", "--prox", "0"], "--nce-loss/--prox: NPID's flags"),
    (["--cld", "--method", "pic"], "--cld is --method cld"),
    (["--inst-t", "0.5"], "go with --method parametric or pic"),
    (["--method", "cld", "--no-inst-feature-norm"], "go with --method parametric or pic"),
    (["--method", "pic", "--inst-t", "0"], "--inst-t must be > 0"),
    (["--method", "pic", "--inst-t", "nan"], "--inst-t must be > 0"),
    (["--method", "pic", "--window-size", "-1"], "--window-size must be >= 0"),
    (["--method", "pic", "--window-mode", "released"], "--window-mode goes with --window-size"),
])
def test_bad_flags_are_one_line(flags, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cifar.get_args(flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and msg in err, err


def test_bad_input_is_one_line(cifar_dir, tmp_path, capsys):
    here = lambda *a: run_here(capsys, *a)  # refusals: in this process
    base = ["--data", cifar_dir, *TINY, "-b", "40", "--epochs", "1", "--retrievals", "0"]
    one_line_error(here("cifar.py", *base, "--method", "pic", "--window-size", "500", "--cos",
                              "--checkpoint-dir", tmp_path / "w"), "larger than the training set (200 images)")
    assert here("cifar.py", *base, "--method", "pic", "--checkpoint-dir", tmp_path / "p").returncode == 0
    ck = tmp_path / "p" / "checkpoint.pth"
    one_line_error(here("cifar.py", *base, "--nce-k", "16", "--resume", ck, "--checkpoint-dir", tmp_path / "n"),
                   "--method pic -> npid")  # a PIC checkpoint resumed as NPID
    one_line_error(here("cifar.py", *base, "--method", "pic", "--checkpoint-dir", tmp_path / "p",
                              "--method", "parametric"), "another run")
    from lib.errors import UserError
    m = build_method(cifar.get_args(["--method", "pic"]), 5, None)
    assert isinstance(m, InstanceClassifier)
    with pytest.raises(UserError, match="do not fit"):  # another dataset's table
        m.load_head_state({"weight": torch.zeros(4, 128)})


# --- torchrun -------------------------------------------------------------------------------

def _weights_worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from lib.engine import check_banks_agree
    from lib.errors import UserError
    torch.manual_seed(10 + rank)  # different seeds: the table must still be rank 0's
    m = build_method(cifar.get_args(["--method", "pic", "--low-dim", "4"]), 20, None)
    check_banks_agree(m.bank, 0, m)
    if rank == 1:
        with torch.no_grad():
            m.weight[3, 2] += 1e-6
    try:
        check_banks_agree(m.bank, 1, m)
        result = "passed"
    except UserError as e:
        result = str(e)
    open(os.path.join(out, f"r{rank}.txt"), "w").write(result)
    dist.barrier()
    dist.destroy_process_group()


def test_ranks_must_agree_on_the_weight_table(tmp_path):
    mp.spawn(_weights_worker, args=(2, f"file://{tmp_path}/rdv", str(tmp_path)), nprocs=2)
    for r in (0, 1):
        assert "diverged at the end of epoch 1" in (tmp_path / f"r{r}.txt").read_text()


def test_torchrun_pic_keeps_one_table(cifar_dir, tmp_path):
    from test_distributed import torchrun
    c = tmp_path / "ck"
    r = torchrun("cifar.py", "--data", cifar_dir, *PIC_RUN, "--epochs", "1", "--retrievals", "0", "--checkpoint-dir", c)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "diverged" not in r.stderr  # the ranks' tables and banks were equal after each window
    ck = torch.load(c / "checkpoint.pth", weights_only=True)
    assert ck["epoch"] == 2 and ck["method_head"]["weight"].shape == (200, 128)


# --- PIC's augmentation (main.py --aug simclr) ---------------------------------------------

def test_simclr_list_is_pics():
    import main
    from PIL import Image
    a = main.get_args(["D", "--aug", "simclr", "--crop-min", "0.08"])
    tf = main.train_list(a).transforms
    names = [type(t).__name__ for t in tf]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "RandomApply",
                     "ToTensor", "Normalize"]
    assert tf[0].size == (224, 224) and tf[0].scale == (0.08, 1.0)
    cj = tf[2].transforms[0]
    got = [v for r in (cj.brightness, cj.contrast, cj.saturation, cj.hue) for v in r]
    assert tf[2].p == 0.8 and got == pytest.approx([0.2, 1.8, 0.2, 1.8, 0.2, 1.8, -0.2, 0.2], abs=1e-12)  # 0.8, 0.8, 0.8, 0.2
    assert tf[3].p == 0.2 and tf[4].p == 0.5 and isinstance(tf[4].transforms[0], main.GaussianBlur)
    assert [type(t).__name__ for t in main.train_list(main.get_args(["D"])).transforms][:4] == \
        ["RandomResizedCrop", "RandomGrayscale", "ColorJitter", "RandomHorizontalFlip"]  # the default: the authors'
    img = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    blur = main.GaussianBlur()
    out = lambda seed: (torch.manual_seed(seed), torch.tensor(list(blur(img).getdata())))[1]
    assert torch.equal(out(1), out(1)) and not torch.equal(out(1), out(2))  # the radius follows torch's seed
    with pytest.raises(SystemExit):
        main.get_args(["D", "--aug", "simclr", "--gpu-aug"])


def test_table1_script_refuses_an_unknown_row():
    import subprocess
    from conftest import ROOT
    r = subprocess.run(["bash", "scripts/fashion_mnist_table1.sh"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "ROWS": "softmax nce_7"})
    assert r.returncode == 2 and r.stderr.strip() == \
        "error: ROWS: unknown row 'nce_7' (rows: parametric softmax nce_1 nce_10 nce_512 nce_4096 pic)", r.stderr
