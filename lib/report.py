"""What a person looks at after a run: baselines on the same split, and retrieval pictures."""
import torch
import torch.nn.functional as F

from . import checkpoint
from . import knn
from .amp import autocast_or_nothing


def denormalize(x, mean, std):
    """Undo the test transform's Normalize: B x C x H x W back to [0, 1] pixels."""
    return x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def tensorboard(log_dir, purge_step=None):
    """The run's TensorBoard writer, its folder checked writable first (one line if it is not);
    `purge_step`: a resumed run's scalars from there on are hidden (they are written again)."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(checkpoint.check_writable_dir(log_dir, "--log-dir"), purge_step=purge_step)


@torch.no_grad()
def pixels(loader, mean, std, one_channel=False, size=None):
    """The [0, 1] pixels of loader.dataset (the test transform undone) as N x D rows by dataset
    index: the raw-image features of the paper's comparisons. `size`: resized first (area
    averaging), for images too large to compare pixel by pixel; `one_channel`: grey datasets."""
    out, labels = None, None
    for x, t, index in loader:
        x = denormalize(x, mean, std)
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="area")
        x = (x[:, :1] if one_channel else x).flatten(1)
        if out is None:
            out = torch.zeros(len(loader.dataset), x.shape[1])
            labels = torch.zeros(len(loader.dataset), *torch.as_tensor(t).shape[1:], dtype=torch.long)
        out[index], labels[index] = x, torch.as_tensor(t).long()
    return out, labels


def raw_pixel_knn(train_loader, val_loader, train_labels, num_classes, mean, std, k=200, sigma=0.1):
    """Cosine kNN on the [0, 1] pixels themselves: the floor a learned feature should clear."""
    bank, labels = F.normalize(pixels(train_loader, mean, std)[0], dim=1), torch.as_tensor(train_labels).cpu()
    q, targets = pixels(val_loader, mean, std)
    return knn.knn_classify(F.normalize(q, dim=1), targets, bank, labels, num_classes, k, sigma, chunk=512)["knn_top1"]


@torch.no_grad()
def retrieval_grid(model, train_feats, train_set, val_set, mean, std, device, n_queries=8, k=10, autocast=None):
    """A picture: each row a test image, then its k nearest training images (by cosine similarity)."""
    import torchvision
    model.eval()
    g = torch.Generator().manual_seed(0)
    qi = torch.randperm(len(val_set), generator=g)[:n_queries].tolist()
    queries = torch.stack([val_set[i][0] for i in qi])
    with autocast_or_nothing(autocast):
        f = model(queries.to(device)).float()
    _, nn = knn.topk_neighbors(f, train_feats, k)
    rows = []
    for r, i in enumerate(qi):
        rows.append(queries[r])
        rows.extend(train_set[j][0] for j in nn[r].tolist())
    imgs = denormalize(torch.stack(rows), mean, std).clamp(0, 1)
    return torchvision.utils.make_grid(imgs, nrow=k + 1, padding=2, pad_value=1.0)
