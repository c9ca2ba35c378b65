"""Fashion-MNIST as 3-channel images, found in `--data`, in Debian's dataset-fashion-mnist
location, or downloaded by torchvision where a network exists."""
import gzip
import os
import shutil
import zlib

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
                _extract(os.path.join(src, f + ".gz"), os.path.join(raw, f), src == DEBIAN_DIR)
            return
    if download:
        try:
            datasets.FashionMNIST(root, download=True)
            return
        except Exception:
            pass
    raise UserError(f"Fashion-MNIST not found in '{raw}' or '{DEBIAN_DIR}' and it could not be downloaded: "
                    "install it with `apt-get install -y dataset-fashion-mnist`")


def _extract(gz, dst, packaged):
    """gunzip gz -> dst through a temp file; a truncated or corrupt archive is one line naming it."""
    tmp = dst + ".tmp"
    try:
        with open(tmp, "wb") as o:
            try:
                with gzip.open(gz) as i:
                    shutil.copyfileobj(i, o)
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                todo = ("reinstall it: apt-get install --reinstall dataset-fashion-mnist" if packaged
                        else "delete it to download it again (or put a good copy there)")
                raise UserError(f"Fashion-MNIST: '{gz}' is truncated or corrupt ({type(e).__name__}: {e}); {todo}") from None
        os.replace(tmp, dst)
    except OSError as e:  # cannot read the archive or write the folder (permissions, disk full, ...)
        raise UserError(f"Fashion-MNIST: cannot extract '{gz}' to '{dst}': {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _bad_idx_file(raw, train):
    """The first of the split's idx files whose size does not match its header (truncated), if any."""
    item = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
    for f in FILES[:2] if train else FILES[2:]:
        path = os.path.join(raw, f)
        try:
            with open(path, "rb") as h:
                head = h.read(4)
                nd = head[3] if len(head) == 4 else 0
                dims = h.read(4 * nd)
                size = os.fstat(h.fileno()).st_size
        except OSError:
            return path
        if len(head) < 4 or head[2] not in item or len(dims) < 4 * nd:
            return path
        n = item[head[2]]
        for k in range(nd):
            n *= int.from_bytes(dims[4 * k:4 * k + 4], "big")
        if size != 4 + 4 * nd + n:
            return path
    return None


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
            raw = os.path.join(root, "FashionMNIST", "raw")
            bad = _bad_idx_file(raw, train)
            what = f"'{bad}' is truncated or corrupt" if bad else f"the files in '{raw}' are malformed"
            detail = " ".join(str(e).split())[:160]
            raise UserError(f"Fashion-MNIST: {what} ({type(e).__name__}{': ' + detail if detail else ''}); "
                            f"delete {'it' if bad else 'them'} to extract or download {'it' if bad else 'them'} again") from None

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index].numpy(), mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index]), index
