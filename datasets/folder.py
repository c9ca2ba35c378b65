import os

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
