"""NPID+CLD (--cld) and the MLP head (--head mlp): the k-means and the cross-level loss against float64
closed forms, the two-view bank order, and both options end to end (resume, torchrun)."""
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import cifar
from cld_worker import Tiny, _rank_step
from conftest import TINY
from lib.LinearAverage import LinearAverage
from lib.methods import NPIDCLD, cld_loss, kmeans
from test_distributed import torchrun

D64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=D64)


# --- k-means: CLD's KMeans, by hand ------------------------------------------------------------

def test_kmeans_by_hand():
    x = t([[0, 0], [4, 0], [0, 1], [4, 1]])  # initial centroids: rows 0 and 1
    labels, c = kmeans(x, 2, 5)
    assert labels.tolist() == [0, 1, 0, 1]
    assert torch.equal(c, t([[0, 0.5], [4, 0.5]]))


def test_kmeans_empty_cluster_is_zero_and_ties_go_low():
    x = t([[0, 0], [0, 0], [5, 0], [6, 0]])  # both initial centroids at the origin: every row ties
    labels, c = kmeans(x, 2, 1)
    assert labels.tolist() == [0, 0, 0, 0]            # ties -> the lowest index
    assert torch.equal(c, t([[2.75, 0], [0, 0]]))     # cluster 1 empty: count 1, sum 0 -> zero centroid
    labels, c = kmeans(x, 2, 2)                        # the zero centroid then takes the rows at the origin
    assert labels.tolist() == [1, 1, 0, 0]
    assert torch.equal(c, t([[5.5, 0], [0, 0]]))


def test_kmeans_batch_smaller_than_k():
    x = t([[1, 0], [0, 1]])
    labels, c = kmeans(x, 3, 5)
    assert labels.tolist() == [0, 1] and torch.equal(c, t([[1, 0], [0, 1], [0, 0]]))


def test_gradient_flows_through_the_centroids_only_by_the_means():
    x = t([[0, 0], [4, 0], [0, 1], [4, 1], [0, 2]]).requires_grad_()
    labels, c = kmeans(x, 2, 5)
    g, = torch.autograd.grad(c[0].sum(), x)
    members = (labels == 0).to(D64)
    assert torch.equal(g, (members / members.sum())[:, None].expand(-1, 2))  # d mean / d x_i = 1/n


# --- the cross-level loss ----------------------------------------------------------------------

def feats(B, D, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, D, generator=g, dtype=D64), dim=1)


def ref_labels(x, k, iters):
    """CLD's KMeans labels, written out row by row (not lib.methods.kmeans): first k rows as centroids,
    nearest by squared distance with ties to the lowest index, mean per cluster, empty -> zero."""
    rows = x.detach().tolist()
    cents = [list(r) for r in rows[:k]]
    for _ in range(iters):
        labels = []
        for r in rows:
            d = [sum((a - b) ** 2 for a, b in zip(r, c)) for c in cents]
            labels.append(d.index(min(d)))  # the first minimum
        cents = []
        for j in range(k):
            members = [r for r, l in zip(rows, labels) if l == j]
            cents.append([sum(col) / len(members) for col in zip(*members)] if members else [0.0] * len(rows[0]))
    return torch.tensor(labels)


def test_reference_kmeans_agrees_with_the_repos_on_random_batches():
    for seed, (B, k) in enumerate([(12, 4), (20, 7), (6, 8), (16, 16)]):
        x = feats(B, 5, 10 + seed)
        x[B // 2] = x[0]  # a duplicate row: a tie between two initial centroids
        assert torch.equal(kmeans(x, k, 5)[0], ref_labels(x, k, 5)), (B, k)


def closed_form(g1, g2, k, iters, T, own=False, swap_labels=False):
    """0.5 [CE(g1 C2^T / T, l2) + CE(g2 C1^T / T, l1)], C = A g with A[j, i] = [l_i = j] / max(n_j, 1)."""
    l1, l2 = ref_labels(g1, k, iters), ref_labels(g2, k, iters)

    def means(g, lab):
        A = F.one_hot(lab, k).to(D64).t()                  # k x B
        return A @ g / A.sum(1, keepdim=True).clamp(min=1)  # k x D

    def ce(logits, y):
        return (torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean()
    c1, c2 = means(g1, l1), means(g2, l2)
    if own:  # a wrong variant: each view against its own groups
        c1, c2 = c2, c1
    y1, y2 = (l2, l1) if swap_labels else (l1, l2)
    return (ce(g1 @ c2.t() / T, y2) + ce(g2 @ c1.t() / T, y1)) / 2


def test_cld_loss_and_gradient_closed_form():
    g1, g2 = feats(12, 5, 0).requires_grad_(), feats(12, 5, 1).requires_grad_()
    got = cld_loss(g1, g2, 4, 5, 0.2)
    want = closed_form(g1, g2, 4, 5, 0.2)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    ga, gw = torch.autograd.grad(got, (g1, g2)), torch.autograd.grad(want, (g1, g2))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(ga, gw))
    # not the variants: own-view centroids, swapped targets, another temperature
    for wrong in (closed_form(g1, g2, 4, 5, 0.2, own=True), closed_form(g1, g2, 4, 5, 0.2, swap_labels=True),
                  closed_form(g1, g2, 4, 5, 0.07)):
        assert abs(got.item() - wrong.item()) > 1e-3


def test_recipe_defaults():
    a = cifar.get_args(["--cld"])
    assert (a.cld_clusters, a.cld_iters, a.cld_t, a.cld_lambda, a.head, a.warmup_epochs) == (128, 5, 0.2, 1.0, "linear", 0)
    a = cifar.get_args(["--cld", "--dataset", "cifar100"])  # theirs: --clusters 200 for CIFAR-100
    assert a.cld_clusters == 200 and a.parser_defaults["cld_clusters"] == 128
    assert cifar.get_args(["--dataset", "cifar100"]).cld_clusters == 128  # without --cld: as every checkpoint saved it
    assert cifar.get_args(["--cld", "--dataset", "cifar100", "--cld-clusters", "64"]).cld_clusters == 64
    a = cifar.get_args(["--cos", "--warmup-epochs", "5", "--epochs", "200", "--lr", "0.06"])
    assert cifar.lr_at(0, a) == pytest.approx(0.0006) and cifar.lr_at(4, a) == pytest.approx(0.06 / 100 * (99 * 4 / 5 + 1))
    assert cifar.lr_at(5, a) == pytest.approx(0.06) and cifar.lr_at(199, a) < 1e-4


# --- the method: two views, total loss, bank order ---------------------------------------------

def test_two_view_step_loss_and_bank_order():
    torch.manual_seed(0)
    model, N, lam = Tiny().double(), 30, 0.7
    method = NPIDCLD(LinearAverage(4, N, 0.1, 0.5), model, 4, 3, 5, 0.2, lam).double()
    images, y = torch.randn(8, 2, 3, 2, 2, dtype=D64), torch.randperm(N)[:8]
    V0 = method.bank.memory.clone()
    loss = method(model, images, y)
    with torch.no_grad():
        f1, f2 = model(images[:, 0]), model(images[:, 1])
        pooled = [torch.relu(model.body(images[:, v].flatten(1))) for v in (0, 1)]
        g1, g2 = (F.normalize(method.group(p), dim=1) for p in pooled)
        ce = lambda f: F.cross_entropy(f @ V0.t() / method.bank.T, y)  # T as its float32 buffer holds it
        want = (ce(f1) + ce(f2)) / 2 + lam * closed_form(g1, g2, 3, 5, 0.2)
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    loss.backward()  # both views' gradients against the bank before the step (autograd checks)
    assert method.group.weight.grad is not None and model.body.weight.grad is not None
    method.update()
    ref = LinearAverage(4, N, 0.1, 0.5).double()
    ref.memory.copy_(V0)
    ref.update(f2, y)  # the documented order: view 2, then view 1
    ref.update(f1, y)
    assert torch.allclose(method.bank.memory, ref.memory, rtol=0, atol=1e-15)
    ref.memory.copy_(V0)
    ref.update(f1, y)
    ref.update(f2, y)
    assert not torch.allclose(method.bank.memory, ref.memory, rtol=0, atol=1e-6)  # the order matters


# --- end to end --------------------------------------------------------------------------------

def _load(p):
    return torch.load(p / "checkpoint.pth", weights_only=True)


def test_cld_end_to_end_and_resume_bit_exact(cifar_dir, tmp_path, capsys):
    """In process (cifar.main) to spare the start-up of a fresh interpreter per run."""
    common = ["--data", cifar_dir, "-b", "40", *TINY, "--nce-k", "0", "--retrievals", "0", "--device", "cpu"]
    cld = ["--cld", "--cld-clusters", "8"]
    a, b = tmp_path / "a", tmp_path / "b"
    for d, ep in ((a, 2), (b, 1), (b, 2)):
        cifar.main([*common, *cld, "--epochs", str(ep), "--checkpoint-dir", str(d)])
    ca, cb = _load(a), _load(b)
    assert ca["epoch"] == cb["epoch"] == 2 and torch.isfinite(ca["memory"]["memory"]).all()
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    assert torch.equal(ca["memory"]["memory"], cb["memory"]["memory"])
    assert set(ca["method_head"]) == {"weight", "bias"} and ca["method_head"]["weight"].shape == (128, 64)
    assert all(torch.equal(ca["method_head"][k], cb["method_head"][k]) for k in ca["method_head"])
    assert not any(k.startswith("group") for k in ca["state_dict"])  # the model: backbone + instance head
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # auto-resume of a --cld checkpoint without --cld
        cifar.main([*common, "--epochs", "3", "--checkpoint-dir", str(a)])
    assert e.value.code == 2 and "--cld True -> False" in capsys.readouterr().err  # the run-identity check


def test_mlp_head_end_to_end_and_resume_bit_exact(cifar_dir, tmp_path, capsys):
    common = ["--data", cifar_dir, "-b", "40", *TINY, "--head", "mlp", "--nce-k", "16", "--nce-loss", "ce",
              "--retrievals", "0", "--device", "cpu"]
    a, b = tmp_path / "a", tmp_path / "b"
    for d, ep in ((a, 2), (b, 1), (b, 2)):  # 2 epochs at once, and 1 + resume 1
        cifar.main([*common, "--epochs", str(ep), "--checkpoint-dir", str(d)])
    ck, cb = _load(a), _load(b)
    assert ck["epoch"] == cb["epoch"] == 2
    for k in ck["state_dict"]:
        assert torch.equal(ck["state_dict"][k], cb["state_dict"][k]), k
    assert torch.equal(ck["memory"]["memory"], cb["memory"]["memory"])
    assert torch.equal(ck["memory"]["params"], cb["memory"]["params"])  # Z, estimated once, restored
    assert [k for k in ck["state_dict"] if k.startswith("fc.")] == ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"]
    assert ck["state_dict"]["fc.0.weight"].shape == (64, 64) and "method_head" not in ck  # hidden = backbone width
    # linear evaluation and export read it: the backbone without the head, the embedding with it
    from lib import features
    model, info = features.load_backbone(str(a / "checkpoint.pth"))
    assert info["head"] == "mlp" and info["low_dim"] == 128 and info["has_fc"]
    x = torch.randn(2, 3, 32, 32)
    out = features.taps(model, x, ["avgpool", "embed"])
    assert out["avgpool"].shape == (2, 64) and out["embed"].shape == (2, 128)
    # the command lines: export (no fc.*), the linear probe on the 64-d backbone feature
    import export_backbone
    import linear
    export_backbone.main([str(a / "checkpoint.pth"), str(a / "bb.pth")])
    bb = torch.load(a / "bb.pth", weights_only=True)
    assert bb and not any(k.startswith("fc.") for k in bb)
    assert all(torch.equal(v, ck["state_dict"][k]) for k, v in bb.items())
    linear.main(["--dataset", "cifar10", "--data", cifar_dir, "--pretrained", str(a / "checkpoint.pth"),
                 "--cached", "--epochs", "1", "-j", "0", "--checkpoint-dir", str(a / "lin")])
    assert "avgpool 64-d" in capsys.readouterr().out
    # evaluated without --head mlp: one line naming the flag
    with pytest.raises(SystemExit) as e:
        cifar.main([*common, "--test-only", "--resume", str(a / "checkpoint.pth"), "--head", "linear", "--checkpoint-dir", str(a / "eval")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "trained with --head mlp, not linear; add --head mlp" in err and len(err.splitlines()) == 1


def test_torchrun_cld_gpu_aug(cifar_dir, tmp_path):
    r = torchrun("cifar.py", "--data", cifar_dir, "--epochs", "1", "-b", "40", "--cld", "--cld-clusters", "8",
                 "--nce-k", "16", "--gpu-aug", "--channels-last", "--head", "mlp-bn", "--retrievals", "0",
                 "--checkpoint-dir", tmp_path, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = _load(tmp_path)
    assert "method_head" in ck and ck["memory"]["params"][2] > 0  # Z estimated


def test_group_head_identical_across_ranks(tmp_path):
    mp.spawn(_rank_step, args=(2, f"file://{tmp_path}/rdv", str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt") for r in (0, 1))
    for part in ("head", "model"):
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part]), part
    assert torch.equal(r0["bank"], r1["bank"])


def test_update_order_is_the_in_backward_order():
    """NPIDCLD.update applies view 2 then view 1 because that is the order in which in-backward bank
    updates run for two views (CLD's LinearAverageOp; here this repo's authors'-loop path,
    MemoryBank._update_after_backward): autograd takes the later view's node first. The calls are
    recorded, not applied: applied in backward, view 1's gradient would read a modified bank
    (their code's behaviour, which current PyTorch refuses)."""
    torch.manual_seed(0)
    bank, calls = LinearAverage(4, 10, 0.1, 0.5).double(), []
    bank.update = lambda x, y: calls.append(x.detach().clone())
    y = torch.arange(3)
    f1, f2 = (feats(3, 4, s).requires_grad_() for s in (3, 4))
    ((F.cross_entropy(bank(f1, y), y) + F.cross_entropy(bank(f2, y), y)) / 2).backward()
    assert len(calls) == 2 and torch.equal(calls[0], f2.detach()) and torch.equal(calls[1], f1.detach())
    # the method, on two views of a batch: the same order
    model = Tiny().double()
    method = NPIDCLD(LinearAverage(4, 10, 0.1, 0.5), model, 4, 3, 5, 0.2, 1.0).double()
    images = torch.randn(3, 2, 3, 2, 2, dtype=D64)
    method(model, images, y).backward()
    seen = []
    method.bank.update = lambda x, y: seen.append(x.clone())
    method.update()
    with torch.no_grad():
        v1, v2 = model(images[:, 0]), model(images[:, 1])
    assert len(seen) == 2 and torch.equal(seen[0], v2) and torch.equal(seen[1], v1)


def test_cld_step_under_bf16_autocast():
    torch.manual_seed(0)
    model = Tiny()
    method = NPIDCLD(LinearAverage(4, 30, 0.1, 0.5), model, 4, 3, 5, 0.2, 1.0)
    images, y = torch.randn(8, 2, 3, 2, 2), torch.randperm(30)[:8]
    loss = method(model, images, y, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in (*model.parameters(), *method.group.parameters()))
    before = method.bank.memory.clone()
    method.update()
    assert method.bank.memory.dtype == torch.float32 and not torch.equal(before, method.bank.memory)


# --- the two views: different draws of CLD's list ------------------------------------------------

def test_cld_views_differ_and_the_list_adds_the_flip(cifar_dir):
    from torchvision import transforms as T
    a = cifar.get_args(["--data", cifar_dir, "--cld"])
    tf = cifar.transforms_for(a)[0]
    assert [type(x) for x in tf.transform.transforms] == [T.RandomResizedCrop, T.ColorJitter, T.RandomGrayscale,
                                                          T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    plain = cifar.transforms_for(cifar.get_args(["--data", cifar_dir]))[0]  # the paper's list: no flip
    assert T.RandomHorizontalFlip not in [type(x) for x in plain.transforms]
    train = cifar.task(a).train
    torch.manual_seed(0)
    for i in range(8):
        views = train[i][0]
        assert views.shape == (2, 3, 32, 32) and not torch.equal(views[0], views[1]), i


def test_cld_gpu_views_differ_and_flip(cifar_dir):
    aug = cifar.task(cifar.get_args(["--data", cifar_dir, "--cld", "--gpu-aug"])).gpu_augment
    assert aug.flip and aug.order == "jgf"
    torch.manual_seed(0)
    img = torch.randint(0, 256, (16, 1, 3, 32, 32), dtype=torch.uint8).expand(-1, 2, -1, -1, -1)  # same pixels
    out = aug(img)
    assert out.shape == (16, 2, 3, 32, 32)
    assert all(not torch.allclose(out[i, 0], out[i, 1], atol=1e-3) for i in range(16))
    # the flip alone (no crop, jitter, gray): each view is the image or its mirror, both occur
    from lib.gpu_aug import GPUAugment
    only_flip = GPUAugment(None, aug.mean.flatten().tolist(), aug.std.flatten().tolist(), jitter=0, gray_p=0,
                           flip=True, order="jgf")
    x = torch.rand(1, 3, 8, 8).expand(64, -1, -1, -1).contiguous()
    y = only_flip(x) * aug.std.view(1, 3, 1, 1) + aug.mean.view(1, 3, 1, 1)
    same = [torch.allclose(v, x[0], atol=1e-5) for v in y]
    mirrored = [torch.allclose(v, x[0].flip(2), atol=1e-5) for v in y]
    assert all(a or b for a, b in zip(same, mirrored)) and 10 < sum(mirrored) < 54
