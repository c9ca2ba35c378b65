import os

from torchvision import datasets

from lib.errors import UserError


class ImageFolderInstance(datasets.ImageFolder):
    """ImageFolder (DATA/train/<class>/<image>) that also returns the index."""

    @classmethod
    def open(cls, root, transform=None):
        if not os.path.isdir(root):
            raise UserError(f"dataset folder '{root}' does not exist (expected ImageNet layout DATA/train, DATA/val)")
        try:
            return cls(root, transform=transform)
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
