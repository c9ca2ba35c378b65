import os

import torch

from torchvision import datasets

from lib.errors import UserError


def class_folders(directory):
    """Sorted class folder names of an image-folder split; hidden folders (.ipynb_checkpoints, ...)
    are not classes."""
    classes = [c for c in datasets.folder.find_classes(directory)[0] if not c.startswith(".")]
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
    return classes


def match_classes(directory, classes, given, note=True):
    """{class: train's index} for the class folders of a val split: one it has that train lacks is
    an error; one it lacks is a note (scored, never the right answer)."""
    unknown = [c for c in classes if c not in given]
    if unknown:
        raise UserError(f"'{directory}' has class folder '{unknown[0]}' that train/ does not have"
                        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    absent = [c for c in given if c not in classes]
    if absent and note:
        print(f"note: {len(absent)} of train/'s {len(given)} classes have no folder in '{directory}' "
              f"(e.g. '{absent[0]}'); they are scored but never the right answer")
    return {c: given[c] for c in classes}


def check_val_classes(data):
    """The class folders of DATA/val against DATA/train's, before any image of either is read (a
    script that opens val/ only at its end checks it at the start with this)."""
    train = {c: i for i, c in enumerate(class_folders(os.path.join(data, "train")))}
    match_classes(os.path.join(data, "val"), class_folders(os.path.join(data, "val")), train, note=False)


class ImageFolderInstance(datasets.ImageFolder):
    """ImageFolder (DATA/train/<class>/<image>) that also returns the index."""

    def __init__(self, root, transform=None, class_to_idx=None):
        self._given = class_to_idx
        super().__init__(root, transform=transform)
        if class_to_idx is not None:  # classes[label] is the name of a label, for every label of train's
            self.class_to_idx = dict(class_to_idx)
            self.classes = sorted(class_to_idx, key=class_to_idx.get)

    def find_classes(self, directory):
        """With `class_to_idx` (train's), a val folder's classes take train's indices by name: a
        val/ that lacks some of train's classes must not shift the labels of the others."""
        classes = class_folders(directory)
        if self._given is None:
            return classes, {c: i for i, c in enumerate(classes)}
        return classes, match_classes(directory, classes, self._given)

    @classmethod
    def open_split(cls, data, split, transform=None):
        """DATA/train or DATA/val of an ImageNet layout, every split labelled by train's class names
        (the one class mapping of every script: val/ may lack some of train's classes, not add one)."""
        for sub in ("train", "val"):  # both, whichever is opened first: the layout is wrong, not one image
            if not os.path.isdir(os.path.join(data, sub)):
                raise UserError(f"'{os.path.join(data, sub)}' is missing: DATA must hold train/ and val/ class folders")
        train_classes = None
        if split != "train":
            try:
                train_classes = {c: i for i, c in enumerate(class_folders(os.path.join(data, "train")))}
            except (FileNotFoundError, OSError) as e:
                raise UserError(f"'{os.path.join(data, 'train')}': {str(e).splitlines()[0]}") from None
        return cls.open(os.path.join(data, split), transform, class_to_idx=train_classes)

    @classmethod
    def open(cls, root, transform=None, class_to_idx=None):
        if not os.path.isdir(root):
            raise UserError(f"dataset folder '{root}' does not exist (expected ImageNet layout DATA/train, DATA/val)")
        try:
            return cls(root, transform=transform, class_to_idx=class_to_idx)
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"'{root}' is not an image-folder dataset: {str(e).splitlines()[0]}") from None

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            img = self.loader(path)
        except Exception as e:
            raise UserError(f"cannot read image '{path}' ({type(e).__name__}: {e}); delete or replace it") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, target, index


# --- a folder of images without classes (main.py DATA on your own photos) --------------------

def _image_suffixes():
    from PIL import Image
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def find_images(root, exclude=()):
    """Relative paths (with '/') of every file under `root` whose suffix PIL opens, found recursively,
    hidden files and folders skipped, each real folder once (a link back up is not a loop), the
    folders in `exclude` (a run's own outputs inside DATA) skipped, sorted: the order the bank indexes them by."""
    suffixes, out = _image_suffixes(), []
    seen, skip = {os.path.realpath(root)}, {os.path.realpath(x) for x in exclude}
    for d, dirs, files in os.walk(root, followlinks=True):
        keep = []
        for x in sorted(dirs):
            real = os.path.realpath(os.path.join(d, x))
            if not x.startswith(".") and real not in seen and real not in skip:
                seen.add(real)
                keep.append(x)
        dirs[:] = keep
        rel = os.path.relpath(d, root)
        out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in suffixes]
    return sorted(out)


def check_images(root, rel):
    """Every file opens as an image (its header, as PIL reads it), or one UserError line; byte-identical
    copies are one note line (each copy is its own instance to NPID). Returns None."""
    import hashlib
    from PIL import Image
    bad = []
    by_size = {}
    for r in rel:
        p = os.path.join(root, r)
        try:
            with Image.open(p) as im:
                im.size
        except Exception as e:
            bad.append((r, f"{type(e).__name__}: {str(e)[:80]}"))
            continue
        by_size.setdefault(os.path.getsize(p), []).append(r)
    if bad:
        raise UserError(f"{len(bad)} of the {len(rel)} image files under '{root}' cannot be read as images (first: "
                        f"'{bad[0][0]}', {bad[0][1]}); remove or replace them")
    copies = []  # only files of equal size are read whole
    for same in (v for v in by_size.values() if len(v) > 1):
        seen = {}
        for r in same:
            with open(os.path.join(root, r), "rb") as f:
                h = hashlib.file_digest(f, "sha1").hexdigest()
            if h in seen:
                copies.append((r, seen[h]))
            seen.setdefault(h, r)
    if copies:
        print(f"note: {len(copies)} of the {len(rel)} images under '{root}' are byte-identical copies of others "
              f"(first: '{copies[0][0]}' = '{copies[0][1]}'); NPID treats each copy as an image of its own")


class UnlabelledImages(torch.utils.data.Dataset):
    """Every image under `root` (find_images), returning (image, -1, index): no classes, no labels."""

    def __init__(self, root, rel, transform=None):
        self.root, self.rel, self.transform = root, list(rel), transform
        self.samples = [(os.path.join(root, r), -1) for r in self.rel]
        self.targets, self.classes = [-1] * len(self.rel), []
        self.loader = datasets.folder.default_loader

    def __len__(self):
        return len(self.samples)

    __getitem__ = ImageFolderInstance.__getitem__


def layout(data):
    """How main.py reads DATA: 'labelled' (train/ and val/, the ImageNet layout), or the folder whose
    images are the unlabelled training set (DATA/train without val/, or DATA itself). One line when
    there is nothing to train on."""
    if not os.path.isdir(data):
        raise UserError(f"DATA '{data}' does not exist or is not a folder")
    train, val = os.path.join(data, "train"), os.path.join(data, "val")
    if os.path.isdir(train) and os.path.isdir(val):
        return "labelled", data
    if os.path.isdir(val):
        raise UserError(f"'{data}' has val/ but no train/: give a folder of images, DATA/train (+ val/), or DATA itself")
    return "unlabelled", train if os.path.isdir(train) else data


def open_unlabelled(root, transform=None, exclude=()):
    """UnlabelledImages of `root`, checked: no images, unreadable files: one line; copies: a note."""
    rel = find_images(root, exclude)
    if not rel:
        raise UserError(f"'{root}' holds no image files (looked recursively, hidden files and folders skipped, for "
                        f"{', '.join(sorted(_image_suffixes())[:6])}, ...)")
    check_images(root, rel)
    return UnlabelledImages(root, rel, transform)
