import os
import pickle

from PIL import Image
from torchvision import datasets

from lib.errors import UserError


class _Instance:
    def __getitem__(self, index):
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target, index


def _no_md5(cls):
    # a CIFAR root in the standard pickle layout is accepted even if torchvision did not
    # download it (regenerated or converted copies have other md5 sums): only existence is checked
    return dict(train_list=[(f, None) for f, _ in cls.train_list],
                test_list=[(f, None) for f, _ in cls.test_list],
                meta={**cls.meta, "md5": None})


def _open(cls, root, train, transform, download):
    folder = os.path.join(root, cls.base_folder)
    if download and not os.path.isdir(folder):
        try:
            cls(root=root, train=train, download=True)
        except Exception as e:
            raise UserError(f"{cls.__name__[:-8]} not found in '{folder}' and the download failed "
                            f"({type(e).__name__}); put the python pickle batches there") from None
    try:
        return cls(root=root, train=train, transform=transform, download=False)
    except RuntimeError:
        raise UserError(f"{cls.__name__[:-8]} not found: expected the python pickle batches in '{folder}' "
                        "(no network to download it here?)") from None
    except Exception as e:  # unpickling garbage raises many types
        bad, err = _bad_file(cls, folder)
        if bad:
            e, what = err, f"'{bad}' is truncated or corrupt"
        else:
            what = f"malformed files in '{folder}'"
        detail = " ".join(str(e).split())[:160]
        todo = (f"delete '{folder}' to download it again" if download else
                "replace it with a good copy (or delete the folder and drop --no-download to download it)")
        raise UserError(f"{cls.__name__[:-8]}: {what} ({type(e).__name__}{': ' + detail if detail else ''}); {todo}") from None


def _bad_file(cls, folder):
    """The first of the dataset's pickle files that does not unpickle, and its error."""
    for name, _ in [*cls.train_list, *cls.test_list, (cls.meta["filename"], None)]:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                pickle.load(f, encoding="latin1")
        except Exception as e:
            return path, e
    return None, None


class CIFAR10Instance(_Instance, datasets.CIFAR10):
    locals().update(_no_md5(datasets.CIFAR10))

    @classmethod
    def open(cls, root, train=True, transform=None, download=False):
        return _open(cls, root, train, transform, download)


class CIFAR100Instance(_Instance, datasets.CIFAR100):
    locals().update(_no_md5(datasets.CIFAR100))

    @classmethod
    def open(cls, root, train=True, transform=None, download=False):
        return _open(cls, root, train, transform, download)
