"""Weighted kNN (k=200, sigma=T) and 1-NN evaluation of NPID features.

`knn_predict` is the pure tensor-level vote; `knn_eval` runs a model over a loader in chunks,
against the memory bank or against features recomputed with the test transform
(`compute_features`, which never writes into the bank). Under torchrun the queries and the
recompute are sharded over ranks and the counts summed, so the figure equals one process's."""
import torch
import torch.distributed as dist

from lib import features

BANK_CHUNK_BYTES = 256 * 2**20  # similarity block per chunk; peak memory beyond the bank ~ 2x this


def topk_neighbors(query, bank, k):
    """Top-k cosine similarities and bank indices (B x k), chunked over the bank with a running
    merge, so that a 1.28M bank never produces a B x N block."""
    k = min(k, bank.shape[0])
    step = max(k, BANK_CHUNK_BYTES // (4 * max(1, query.shape[0])))
    best_v = best_i = None
    for a in range(0, bank.shape[0], step):
        sim = query @ bank[a:a + step].t()  # B x chunk
        v, i = sim.topk(min(k, sim.shape[1]), dim=1)
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


_world = features.world
_shard_loader = features.shard_loader


def compute_features(model, loader, device, dim, autocast=None):
    """N x dim features of loader.dataset, written by dataset index into a new tensor on `device`
    (lib/features.py: sharded over ranks and gathered; the bank is never touched)."""
    feats = features.extract_features(model, loader, device, "embed", autocast=autocast)[0]
    return feats.to(device)


@torch.no_grad()
def knn_eval(model, bank, bank_labels, loader, num_classes, k=200, sigma=0.1, device="cpu", autocast=None):
    """Top-1 / top-5 of the weighted kNN and top-1 of 1-NN, in percent, over loader's images."""
    was_training = model.training
    model.eval()
    bank_labels = torch.as_tensor(bank_labels, device=device)
    counts = torch.zeros(4, device=device, dtype=torch.float64)  # total, top1, top5, nn1
    for images, targets, _ in _shard_loader(loader):
        with autocast() if autocast else torch.no_grad():
            q = model(images.to(device, non_blocking=True))
        q, targets = q.float(), targets.to(device)
        sims, idx = topk_neighbors(q, bank, k)
        labels = bank_labels[idx]
        pred = rank_by_score(vote(sims, labels, num_classes, sigma))
        hit = pred[:, :5].eq(targets[:, None])
        counts += torch.stack([torch.tensor(len(targets), device=device), hit[:, 0].sum(),
                               hit.any(1).sum(), labels[:, 0].eq(targets).sum()]).double()
    if _world()[1] > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    total, top1, top5, nn1 = counts.tolist()
    res = {"knn_top1": 100 * top1 / total, "nn_top1": 100 * nn1 / total}
    if k >= 5 and num_classes >= 5:
        res["knn_top5"] = 100 * top5 / total
    return res


def kNN(net, bank, bank_labels, testloader, K=200, sigma=0.1, num_classes=None, device="cpu"):
    """The original's entry point: weighted kNN top-1 (percent) of `net` over `testloader`."""
    num_classes = num_classes or int(torch.as_tensor(bank_labels).max()) + 1
    return knn_eval(net, bank, bank_labels, testloader, num_classes, K, sigma, device)["knn_top1"]


def NN(net, bank, bank_labels, testloader, device="cpu"):
    """The original's per-epoch monitor: 1-NN top-1 (percent)."""
    num_classes = int(torch.as_tensor(bank_labels).max()) + 1
    return knn_eval(net, bank, bank_labels, testloader, num_classes, 1, 1.0, device)["nn_top1"]
