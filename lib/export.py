"""--export-features / --export-embedding of an evaluation-only run (main.py -e, cifar.py --test-only)."""
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from . import dist as du
from . import features
from . import report


def _paths(ds):
    """Image paths of an ImageFolder (through InstanceSubset too), else None (CIFAR: arrays in memory)."""
    if hasattr(ds, "indices") and hasattr(ds, "dataset"):
        p = _paths(ds.dataset)
        return None if p is None else [p[i] for i in ds.indices]
    return [p for p, _ in ds.samples] if hasattr(ds, "samples") else None


def _classes(ds):
    return list(getattr(ds, "classes", None) or getattr(getattr(ds, "dataset", None), "classes", None) or [])


def run(args, model, train_feats, task, val_loader, device, autocast, source):
    """Writes args.export_features (.pt, read by torch.load(weights_only=True)) and its .npz twin,
    and/or the projector embedding. Collective under torchrun (the val features); rank 0 writes."""
    val, val_labels, val_idx = features.extract_features(model, val_loader, device, "embed", autocast=autocast)
    if not du.is_main_process():
        return
    n = len(task.train_eval)
    train_labels = torch.as_tensor(list(map(int, task.train_eval.targets)))
    if args.export_features:
        out = {"train_features": train_feats.float().cpu(), "train_labels": train_labels,
               "train_indices": torch.arange(n), "val_features": val, "val_labels": val_labels,
               "val_indices": val_idx, "train_source": source, "arch": args.arch, "checkpoint": args.resume,
               "classes": _classes(task.val)}
        for split, ds in (("train", task.train_eval), ("val", task.val)):
            p = _paths(ds)
            if p is not None:
                out[f"{split}_paths"] = p
        checkpoint.save_atomic(out, args.export_features)
        npz = os.path.splitext(args.export_features)[0] + ".npz"
        np.savez(npz, **{k: (v.numpy() if torch.is_tensor(v) else np.array(v)) for k, v in out.items()})
        print(f" * features: train {tuple(out['train_features'].shape)} ({source}), val {tuple(val.shape)} -> "
              f"'{args.export_features}', '{npz}'")
    if args.export_embedding:
        k = min(args.export_embedding, len(val))
        pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(args.seed))[:k].sort().values
        thumbs = report.denormalize(torch.stack([task.val[i][0] for i in pick.tolist()]), task.mean, task.std).clamp(0, 1)
        thumbs = F.interpolate(thumbs, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        names = _classes(task.val)
        meta = [names[c] if c < len(names) else str(c) for c in val_labels[pick].tolist()]
        log_dir = args.log_dir or os.path.join(args.checkpoint_dir, "tb")
        with report.tensorboard(log_dir) as w:
            w.add_embedding(val[pick], metadata=meta, label_img=thumbs, tag="val_features")
        print(f" * projector embedding of {k} val features -> '{log_dir}' (tensorboard --logdir {log_dir})")
