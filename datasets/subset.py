import collections
import re

import numpy as np
import torch

from lib.checkpoint import write_text_atomic
from lib.errors import UserError


class InstanceSubset(torch.utils.data.Dataset):
    """A fixed subset whose index is the position in the subset (the bank has one row per sample);
    `indices` are the dataset's own (lib/export.source_indices reads through nested subsets)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)
        t = dataset.targets
        if len(t) and np.ndim(t[0]):  # multi-label (VOC's 20-vectors): the rows, as the dataset holds them
            self.targets = np.asarray(t)[self.indices]
        else:
            self.targets = [int(t[i]) for i in self.indices]

    @property
    def classes(self):
        return self.dataset.classes

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        img, target, _ = self.dataset[self.indices[i]]
        return img, target, i

    @classmethod
    def random_subset(cls, dataset, n, seed=0):
        """n samples drawn at random without replacement by a fixed seed (the same split every run),
        in dataset order; n = 0 (or >= the size) is the whole dataset."""
        if n < 0:
            raise UserError(f"a subset size must be >= 0 (0 = all images), got {n}")
        if not n or n >= len(dataset):
            return dataset
        g = torch.Generator().manual_seed(seed)
        return cls(dataset, torch.randperm(len(dataset), generator=g)[:n].sort().values.tolist())

    first_per_seed = random_subset  # the earlier name


# --- the labelled subset of semi-supervised learning (finetune.py) ---------------------------

def parse_labels(spec):
    """'1%' -> ('fraction', 0.01), '60/class' -> ('per_class', 60); anything else a UserError."""
    s = str(spec).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%|(\d+)/class", s)  # strict: float() would take '1 %' or '1_0'
    if m and m.group(1) is not None and 0 < float(m.group(1)) <= 100:
        return "fraction", float(m.group(1)) / 100
    if m and m.group(2) is not None and int(m.group(2)) >= 1:
        return "per_class", int(m.group(2))
    raise UserError(f"--labels takes a percentage in (0, 100] ('1%', '10%') or a count per class ('60/class'), "
                    f"got '{spec}'")


def draw_per_class(targets, spec, seed, class_names=None):
    """The labelled subset: sorted dataset indices drawn class by class with a fixed seed. A
    fraction keeps each class's share (round(f * n_c), at least one): stratified, so equal-sized
    classes get equal counts; 'N/class' takes N of every class. Rank-independent: a pure function of
    the labels and the seed."""
    kind, v = parse_labels(spec)
    targets = torch.as_tensor([int(t) for t in targets])
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(int(targets.max()) + 1):
        idx = (targets == c).nonzero().flatten()
        if len(idx) == 0:
            continue
        k = max(1, int(round(v * len(idx)))) if kind == "fraction" else v
        if k > len(idx):
            name = class_names[c] if class_names and c < len(class_names) else c
            raise UserError(f"--labels {spec}: class '{name}' has only {len(idx)} training images")
        chosen += idx[torch.randperm(len(idx), generator=g)[:k]].tolist()
    return sorted(chosen)


SUBSET_HEADER = "# finetune.py labelled subset:"


def _bare_names(names):
    """(the FILE of each CLASS/FILE name, how many training images have each FILE)."""
    bare = [n.rsplit("/", 1)[-1] for n in names]
    return bare, collections.Counter(bare)


def read_subset_file(path, names, dataset):
    """Sorted dataset indices of the images a subset file names, one per line: the file names of
    an image folder's training images (SimCLR's imagenet_subsets/1percent.txt format), or, for the
    datasets stored as arrays, the indices under the header line finetune.py writes (which names the
    dataset, so that a CIFAR list is not read as Fashion-MNIST's). Names not in the training set,
    duplicates, an empty file: one UserError line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        lines = [ln.strip() for ln in raw.decode("utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--subset-file '{path}': cannot read it ({type(e).__name__}: {e})") from None
    if not any(ln and not ln.startswith("#") for ln in lines):
        raise UserError(f"--subset-file '{path}' is empty: it names no images")
    header = [ln for ln in lines if ln.startswith("#")]
    entries = [ln for ln in lines if ln and not ln.startswith("#")]
    meta = dict(kv.split("=", 1) for ln in header if ln.startswith(SUBSET_HEADER)
                for kv in ln[len(SUBSET_HEADER):].split() if "=" in kv)
    arrays = names[:1] == ["0"]  # CIFAR / Fashion-MNIST: names are the indices
    if meta.get("dataset", dataset) != dataset or (arrays and "dataset" not in meta):
        raise UserError(f"--subset-file '{path}' is a list of {meta.get('dataset', 'file names (no dataset header)')}, "
                        f"not of {dataset}" + (" (lists of indices carry finetune.py's header line)" if arrays else ""))
    if "train_images" in meta and meta["train_images"] != str(len(names)):
        raise UserError(f"--subset-file '{path}' was written for a training set of {meta['train_images']} images; "
                        f"this one has {len(names)}")
    if "images" in meta:  # finetune.py's own files: a truncated copy is not another subset
        whole = raw.endswith(b"\n")
        if meta["images"] != str(len(entries)) or not whole:
            raise UserError(f"--subset-file '{path}' is truncated: its header says {meta['images']} images, it "
                            f"holds {len(entries)}" + ("" if whole else " and its last line is cut off"))
    where = {n: i for i, n in enumerate(names)}
    if not arrays:  # a bare file name too, where it is one image's (ImageNet's names are unique)
        bare, base = _bare_names(names)
        where.update({b: i for i, b in enumerate(bare) if base[b] == 1})
        twice = [e for e in entries if e not in where and base.get(e, 0) > 1]
        if twice:
            raise UserError(f"--subset-file '{path}': '{twice[0]}' is the name of {base[twice[0]]} training images "
                            f"(in different class folders), as are {len(twice) - 1} more of its names: give them as CLASS/FILE")
    unknown = [e for e in entries if e not in where]
    if unknown:
        raise UserError(f"--subset-file '{path}': {len(unknown)} of its {len(entries)} names are not images of "
                        f"this training set (first: {', '.join(map(ascii, unknown[:3]))}); a list of another dataset?")
    idx = [where[e] for e in entries]
    if len(set(idx)) < len(idx):
        raise UserError(f"--subset-file '{path}' names {len(idx) - len(set(idx))} images twice")
    return sorted(idx)


def write_subset_file(path, indices, names, dataset, what):
    """The subset of a run, in the format read_subset_file reads (atomically, left as it is when
    it already holds the same list)."""
    if names[:1] != ["0"]:  # an image folder: bare file names where they are unique (SimCLR's format)
        bare, base = _bare_names(names)
        names = [b if base[b] == 1 else n for n, b in zip(names, bare)]
    text = f"{SUBSET_HEADER} dataset={dataset} train_images={len(names)} images={len(indices)} {what}\n" \
        + "".join(names[i] + "\n" for i in indices)
    write_text_atomic(path, text, "subset file")
