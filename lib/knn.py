"""Weighted kNN (k=200, sigma=T) and 1-NN evaluation of NPID features (the paper's section 3.4).

`knn_predict` is the pure tensor-level vote and `knn_classify` the pure classifier over given
features; `knn_eval` extracts the query features with lib/features.py and then classifies them, as
DINO's eval_knn.py does (extract, then a pure kNN). The recomputed train features never touch the
memory bank (`compute_features` writes a new tensor by dataset index)."""
import math

import torch

from . import features

BANK_CHUNK_BYTES = 256 * 2**20  # similarity block per chunk; peak memory beyond the bank ~ 2x this
QUERY_CHUNK = 256  # queries classified at once (a B x k block of neighbours)


def block_topk(sim, k, block=64):
    """The values of sim.topk(k, dim=1), exactly, and their columns, about 3x faster on the CPU when
    k << N: the k largest of a row lie in the k blocks of `block` columns with the largest maxima
    (a top-k element lifts its block's max to at least the k-th value; at most k blocks hold one).
    Among tied values the columns may differ from torch.topk's."""
    B, N = sim.shape
    nb = N // block
    if k * block >= N:
        return sim.topk(k, dim=1)
    top_blocks = sim[:, :nb * block].view(B, nb, block).amax(2).topk(k, dim=1).indices  # B x k
    cand = (top_blocks[:, :, None] * block + torch.arange(block, device=sim.device)).flatten(1)  # B x k*block
    if nb * block < N:  # the last, partial block: always a candidate
        cand = torch.cat([cand, torch.arange(nb * block, N, device=sim.device).expand(B, -1)], 1)
    v, j = sim.gather(1, cand).topk(k, dim=1)
    return v, cand.gather(1, j)


def topk_neighbors(query, bank, k, topk=None):
    """Top-k cosine similarities and bank indices (B x k), chunked over the bank with a running
    merge, so that a 1.28M bank never produces a B x N block. `topk(sim, k)`: torch.topk (the kNN's)
    unless given (retrieval's block_topk)."""
    k = min(k, bank.shape[0])
    step = max(k, BANK_CHUNK_BYTES // (4 * max(1, query.shape[0])))
    topk = topk or (lambda s, k: s.topk(k, dim=1))
    best_v = best_i = None
    for a in range(0, bank.shape[0], step):
        sim = query @ bank[a:a + step].t()  # B x chunk
        v, i = topk(sim, min(k, sim.shape[1]))
        i += a
        if best_v is not None:
            v, j = torch.cat([best_v, v], 1).topk(k, dim=1)
            i = torch.cat([best_i, i], 1).gather(1, j)
        best_v, best_i = v, i
    return best_v, best_i


def vote(sims, labels, num_classes, sigma):
    """Class scores sum_{neighbours of class c} exp(s / sigma): B x C."""
    w = (sims / sigma).exp()
    return torch.zeros(sims.shape[0], num_classes, device=sims.device, dtype=w.dtype).scatter_add_(1, labels, w)


def knn_predict(query, bank, bank_labels, num_classes, k=200, sigma=0.1):
    """B x C weighted-kNN class scores of L2-normalised `query` (B x D) against `bank` (N x D)."""
    sims, idx = topk_neighbors(query, bank, k)
    return vote(sims, bank_labels[idx], num_classes, sigma)


def rank_by_score(scores):
    """Classes by descending score; ties go to the lower class index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def topk_hits(scores, targets, k=5):
    """(top-1 hits, top-k hits) of B x C scores: the one counter of every classifier's figure."""
    hit = rank_by_score(scores)[:, :k].eq(targets[:, None])
    return int(hit[:, 0].sum()), int(hit.any(1).sum())


@torch.no_grad()
def knn_classify(query, targets, bank, bank_labels, num_classes, k=200, sigma=0.1, chunk=QUERY_CHUNK):
    """Top-1 / top-5 of the weighted kNN and top-1 of 1-NN, in percent, of `query` (N x D, unit
    norm) with labels `targets` against `bank`: a pure function of the features."""
    bank_labels = torch.as_tensor(bank_labels, device=bank.device)
    query, targets = query.to(bank.device).float(), torch.as_tensor(targets, device=bank.device)
    top1 = top5 = nn1 = 0
    for a in range(0, len(query), chunk):
        sims, idx = topk_neighbors(query[a:a + chunk], bank, k)
        labels = bank_labels[idx]
        t1, t5 = topk_hits(vote(sims, labels, num_classes, sigma), targets[a:a + chunk])
        top1, top5, nn1 = top1 + t1, top5 + t5, nn1 + int(labels[:, 0].eq(targets[a:a + chunk]).sum())
    total = max(1, len(query))
    res = {"knn_top1": 100 * top1 / total, "nn_top1": 100 * nn1 / total}
    if k >= 5 and num_classes >= 5:
        res["knn_top5"] = 100 * top5 / total
    return res


def compute_features(model, loader, device, dim=None, autocast=None):
    """N x D features of loader.dataset, written by dataset index into a new tensor on `device`
    (lib/features.py: sharded over ranks and gathered; the bank is never touched)."""
    feats = features.extract_features(model, loader, device, "embed", autocast=autocast)[0]
    return feats.to(device)


@torch.no_grad()
def knn_eval(model, bank, bank_labels, loader, num_classes, k=200, sigma=0.1, device="cpu", autocast=None):
    """The kNN figures of `model` over loader's images: their features (sharded over torchrun
    ranks and gathered, so every rank gets the one-process figure), then knn_classify."""
    query, targets, _ = features.extract_features(model, loader, device, "embed", autocast=autocast,
                                                  progress=False)
    chunk = getattr(loader, "batch_size", None) or QUERY_CHUNK  # the loader's batches: the same top-k blocks
    return knn_classify(query, targets, bank, bank_labels, num_classes, k, sigma, chunk)


def kNN(net, bank, bank_labels, testloader, K=200, sigma=0.1, num_classes=None, device="cpu"):
    """The original's entry point: weighted kNN top-1 (percent) of `net` over `testloader`."""
    num_classes = num_classes or int(torch.as_tensor(bank_labels).max()) + 1
    return knn_eval(net, bank, bank_labels, testloader, num_classes, K, sigma, device)["knn_top1"]


def NN(net, bank, bank_labels, testloader, device="cpu"):
    """The original's per-epoch monitor: 1-NN top-1 (percent)."""
    num_classes = int(torch.as_tensor(bank_labels).max()) + 1
    return knn_eval(net, bank, bank_labels, testloader, num_classes, 1, 1.0, device)["nn_top1"]


@torch.no_grad()
def uniformity(feats, n=2048, t=2.0, seed=0):
    """Wang & Isola's uniformity of unit-norm rows, log E exp(-t ||x - y||^2) over the pairs of a seeded
    sample of n rows (all if fewer), in float64: 0 when all rows coincide, lower when spread (about
    -3.8 for 128-d rows uniform on the sphere at t = 2). A label-free measure of a memory bank."""
    x = feats.detach().double()
    if len(x) > n:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].to(x.device)]
    if len(x) < 2:
        return 0.0
    d2 = (2 - 2 * x @ x.T).clamp(min=0)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return float(torch.logsumexp(-t * d2[off], 0) - math.log(int(off.sum())))

