"""--export-features / --export-embedding of an evaluation-only run (main.py -e, cifar.py --test-only)."""
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from . import dist as du
from . import features
from . import report
from .errors import UserError


def source_indices(ds):
    """(the dataset under any subsets, its own index of each of ds's positions): a subset's position
    0 may be image 111 of the dataset, and files and lines name the dataset's index."""
    idx = list(range(len(ds)))
    while hasattr(ds, "indices") and hasattr(ds, "dataset"):  # InstanceSubset, torch's Subset, nested
        idx = [ds.indices[i] for i in idx]
        ds = ds.dataset
    return ds, [int(i) for i in idx]


def image_paths(ds):
    """The image file of each of ds's positions (image folders, through subsets); None for the
    datasets held as arrays (CIFAR, Fashion-MNIST, VOC's list)."""
    base, idx = source_indices(ds)
    samples = getattr(base, "samples", None)
    return None if samples is None else [samples[i][0] for i in idx]


def class_names(ds):
    """The class list of a dataset (through subsets), [] if it has none."""
    return list(getattr(source_indices(ds)[0], "classes", None) or [])


def record(train_feats, train_labels, val_feats, val_labels, train_ds, val_ds, **meta):
    """The one feature-file layout (--export-features, retrieve.py --save-features, its --index):
    train/val features and labels, each row's index in its dataset (not its position in a subset),
    the class names, the image paths of an image folder, and `meta` (dataset, arch, checkpoint,
    checkpoint_sha256: the network that made them, train_source)."""
    out = {"train_features": train_feats.float().cpu(), "train_labels": torch.as_tensor(train_labels),
           "val_features": val_feats.float().cpu(), "val_labels": torch.as_tensor(val_labels),
           "classes": class_names(train_ds if val_ds is None else val_ds), **meta}
    for split, ds, feats in (("train", train_ds, train_feats), ("val", val_ds, val_feats)):
        if ds is None:  # no such split (an unlabelled folder has no val)
            out[f"{split}_indices"] = torch.zeros(0, dtype=torch.long)
            continue
        idx = source_indices(ds)[1]
        if len(idx) != len(feats):
            raise RuntimeError(f"export.record: {len(feats)} {split} features for {len(idx)} images")
        out[f"{split}_indices"] = torch.as_tensor(idx, dtype=torch.long)
        p = image_paths(ds)
        if p is not None:
            out[f"{split}_paths"] = p
    return out


def twin(path):
    """The .npz beside a .pt feature file."""
    return os.path.splitext(path)[0] + ".npz"


def check_target(path, flag, inputs=(), force=False, replaceable=(), force_flag="--force"):
    """Where a feature file may be written, checked before any work: a .pt name (its .npz twin goes
    beside it), never one of the `inputs` (not even with --force), never over an existing file (or
    twin) unless `force` or it is in `replaceable` (realpaths of files this very output wrote)."""
    if not str(path).endswith(".pt"):
        raise UserError(f"{flag} '{path}': give a .pt name (its .npz twin is written beside it)")
    given = {os.path.realpath(p) for p in inputs if p}
    for f in (path, twin(path)):
        if os.path.isdir(f):
            raise UserError(f"{flag}: '{f}' is a folder; give a file name")
        if os.path.realpath(f) in given:
            raise UserError(f"{flag}: '{f}' is one of the inputs; give another name")
        if os.path.lexists(f) and not force and os.path.realpath(f) not in replaceable:
            how = f", or {force_flag} to replace it" if force_flag else ""
            raise UserError(f"{flag}: '{f}' exists; give a new name{how}")


def save(out, path):
    """`path` (.pt, read by torch.load(weights_only=True)) and its .npz twin, each written atomically;
    an earlier twin goes first, so an interrupt leaves at worst a .pt without one, never a pair that
    disagrees."""
    npz = twin(path)
    if os.path.lexists(npz):
        os.remove(npz)
    checkpoint.save_atomic(out, path)
    arrays = {k: (v.numpy() if torch.is_tensor(v) else np.array(v)) for k, v in out.items()}
    checkpoint.write_atomic(npz, lambda f: np.savez(f, **arrays), "feature file")
    return npz


FIELDS = ("train_features", "train_labels", "val_features", "val_labels")


def read(path):
    """A feature file, checked whole (see check); empty, truncated or unreadable: one UserError line."""
    return check(checkpoint.read(path, "feature file"), path)


def check(obj, path):
    """What was read from `path`, if it is a whole feature file: the four tensors present, as many
    labels as features, one feature dimension, finite; else one UserError line."""
    if not isinstance(obj, dict) or not all(torch.is_tensor(obj.get(k)) for k in FIELDS):
        raise UserError(f"'{path}' is not a feature file (no train_features, train_labels, val_features, val_labels; "
                        "write one with --export-features or retrieve.py --save-features)")
    tf, vf = obj["train_features"], obj["val_features"]
    if tf.dim() != 2 or vf.dim() != 2 or tf.shape[1] != vf.shape[1] or not len(tf):
        raise UserError(f"'{path}': its features are {tuple(tf.shape)} (train) and {tuple(vf.shape)} (val), "
                        "not N x D with one D")
    if len(obj["train_labels"]) != len(tf) or len(obj["val_labels"]) != len(vf):
        raise UserError(f"'{path}': {len(tf)} train features but {len(obj['train_labels'])} labels, {len(vf)} val "
                        f"features but {len(obj['val_labels'])} labels (not a whole feature file)")
    if not (torch.isfinite(tf).all() and torch.isfinite(vf).all()):
        raise UserError(f"'{path}' holds non-finite features (NaN or inf)")
    return obj


def projector(log_dir, feats, labels, thumbs, names, tag="val_features"):
    """The TensorBoard projector of `feats` with class names and 32 x 32 thumbnails."""
    thumbs = F.interpolate(thumbs, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    meta = [names[c] if c < len(names) else str(c) for c in labels.tolist()]
    with report.tensorboard(log_dir) as w:
        w.add_embedding(feats, metadata=meta, label_img=thumbs, tag=tag)


def run(args, model, train_feats, task, val_loader, device, autocast, source, ckpt_path):
    """Writes args.export_features (and its .npz twin) and/or the projector embedding; `ckpt_path` the
    checkpoint evaluated (given or the latest). Collective under torchrun (the val features); rank 0 writes."""
    if val_loader is None:  # an unlabelled folder: its images are the index, there is no val split
        val, val_labels = torch.zeros(0, train_feats.shape[1]), torch.zeros(0, dtype=torch.long)
    else:
        val, val_labels, _ = features.extract_features(model, val_loader, device, "embed", autocast=autocast)
    if not du.is_main_process():
        return
    train_labels = torch.as_tensor(list(map(int, task.train_eval.targets)))
    if args.export_features:
        out = record(train_feats, train_labels, val, val_labels, task.train_eval, task.val, train_source=source,
                     arch=args.arch, checkpoint=ckpt_path, checkpoint_sha256=checkpoint.sha256(ckpt_path),
                     dataset=getattr(args, "dataset", "imagenet"))
        npz = save(out, args.export_features)
        print(f" * features: train {tuple(out['train_features'].shape)} ({source}), val {tuple(val.shape)} -> "
              f"'{args.export_features}', '{npz}'")
    if args.export_embedding and not len(val):
        print(" * no val images: no projector embedding")
    elif args.export_embedding:
        k = min(args.export_embedding, len(val))
        pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(args.seed))[:k].sort().values
        thumbs = report.denormalize(torch.stack([task.val[i][0] for i in pick.tolist()]), task.mean, task.std).clamp(0, 1)
        log_dir = args.log_dir or os.path.join(args.checkpoint_dir, "tb")
        projector(log_dir, val[pick], val_labels[pick], thumbs, class_names(task.val))
        print(f" * projector embedding of {k} val features -> '{log_dir}' (tensorboard --logdir {log_dir})")
