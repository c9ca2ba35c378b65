"""Fashion-MNIST as 3-channel images, found in `--data`, in Debian's dataset-fashion-mnist
location, or downloaded by torchvision where a network exists."""
import gzip
import os
import shutil

from PIL import Image
from torchvision import datasets

from lib.errors import UserError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def prepare(root, download=True):
    """Make sure `root/FashionMNIST/raw` holds the four idx files torchvision reads."""
    raw = os.path.join(root, "FashionMNIST", "raw")
    if all(os.path.isfile(os.path.join(raw, f)) for f in FILES):
        return
    for src in (raw, root, os.path.join(root, "fashion-mnist"), DEBIAN_DIR):
        if all(os.path.isfile(os.path.join(src, f + ".gz")) for f in FILES):
            os.makedirs(raw, exist_ok=True)
            for f in FILES:
                with gzip.open(os.path.join(src, f + ".gz")) as i, open(os.path.join(raw, f + ".tmp"), "wb") as o:
                    shutil.copyfileobj(i, o)
                os.replace(os.path.join(raw, f + ".tmp"), os.path.join(raw, f))
            return
    if download:
        try:
            datasets.FashionMNIST(root, download=True)
            return
        except Exception:
            pass
    raise UserError(f"Fashion-MNIST not found in '{raw}' or '{DEBIAN_DIR}' and it could not be downloaded: "
                    "install it with `apt-get install -y dataset-fashion-mnist`")


class FashionMNISTInstance(datasets.FashionMNIST):
    @property
    def raw_folder(self):  # torchvision derives it from the class name
        return os.path.join(self.root, "FashionMNIST", "raw")

    @classmethod
    def open(cls, root, train=True, transform=None, download=True):
        prepare(root, download)
        try:
            return cls(root, train=train, transform=transform)
        except Exception as e:
            raise UserError(f"Fashion-MNIST files in '{root}/FashionMNIST/raw' are malformed ({e})") from None

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index].numpy(), mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index]), index
