"""Weighted kNN (section 5) against a brute-force vote."""
import pytest
import torch
import torch.nn.functional as F

from lib import knn


def brute(query, bank, labels, C, k, sigma):
    out = torch.zeros(len(query), C, dtype=torch.float64)
    for b, q in enumerate(query.double()):
        s = bank.double() @ q
        order = sorted(range(len(s)), key=lambda i: -s[i].item())[:k]
        for i in order:
            out[b, labels[i]] += torch.exp(s[i] / sigma)
    return out


@pytest.mark.parametrize("k,C", [(200, 10), (3, 4), (1, 10), (7, 5)])
def test_knn_vote_matches_brute_force(k, C):
    g = torch.Generator().manual_seed(k)
    q = F.normalize(torch.randn(9, 16, generator=g), dim=1)
    bank = F.normalize(torch.randn(500, 16, generator=g), dim=1)
    labels = torch.randint(C, (500,), generator=g)
    got = knn.knn_predict(q, bank, labels, C, k, 0.07)
    assert got.shape == (9, C)
    assert torch.allclose(got.double(), brute(q, bank, labels, C, k, 0.07), rtol=1e-4)


def test_sigma_weights_and_chunking(monkeypatch):
    q = F.normalize(torch.randn(5, 8), dim=1)
    bank = F.normalize(torch.randn(300, 8), dim=1)
    labels = torch.randint(6, (300,))
    full = knn.knn_predict(q, bank, labels, 6, 50, 0.1)
    monkeypatch.setattr(knn, "BANK_CHUNK_BYTES", 4 * 5 * 60)  # 60-row bank chunks, running merge
    assert torch.allclose(knn.knn_predict(q, bank, labels, 6, 50, 0.1), full)
    assert not torch.allclose(knn.knn_predict(q, bank, labels, 6, 50, 0.5), full)  # sigma matters


def test_ties_go_to_lower_class():
    # two neighbours of equal similarity and different classes: equal scores, class 1 before 3
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([3, 1, 0])
    scores = knn.knn_predict(torch.tensor([[1.0, 0.0]]), bank, labels, 4, 2, 0.1)
    assert scores[0, 1] == scores[0, 3]
    assert knn.rank_by_score(scores)[0, :2].tolist() == [1, 3]


class _Identity(torch.nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=1)


def test_knn_eval_top1_top5_and_1nn():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(200, 8, generator=g), dim=1)
    labels = torch.randint(6, (200,), generator=g)
    q = bank[:40] + 0.01 * torch.randn(40, 8, generator=g)
    loader = [(q[:20], labels[:20], None), (q[20:], labels[20:], None)]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(q, labels[:40], torch.arange(40)), batch_size=16)
    res = knn.knn_eval(_Identity(), bank, labels, loader, 6, k=5, sigma=0.1)
    assert res["nn_top1"] == 100.0  # each query sits on its own bank entry
    scores = knn.knn_predict(F.normalize(q, dim=1), bank, labels, 6, 5, 0.1)
    ranked = knn.rank_by_score(scores)
    assert res["knn_top1"] == pytest.approx(100 * ranked[:, 0].eq(labels[:40]).float().mean().item())
    assert res["knn_top5"] == pytest.approx(100 * ranked[:, :5].eq(labels[:40, None]).any(1).float().mean().item())
    assert "knn_top5" not in knn.knn_eval(_Identity(), bank, labels, loader, 6, k=3, sigma=0.1)  # k < 5
    assert "knn_top5" not in knn.knn_eval(_Identity(), bank, labels % 4, loader, 4, k=200, sigma=0.1)  # C < 5


def test_compute_features_by_index_not_into_bank():
    ds = torch.utils.data.TensorDataset(torch.randn(10, 4), torch.zeros(10, dtype=torch.long), torch.arange(10))
    sub = torch.utils.data.Subset(ds, [3, 1, 7])  # the loader order differs from index order

    class Ds(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return ds[i]

    loader = torch.utils.data.DataLoader(Ds(), batch_size=3, sampler=[9, 2, 5, 0, 1, 3, 4, 6, 7, 8])
    f = knn.compute_features(_Identity(), loader, "cpu", 4)
    assert torch.allclose(f, F.normalize(ds.tensors[0], dim=1))  # row i = image i, incl. the last partial batch
    del sub
