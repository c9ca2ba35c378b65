"""main.py --decode gpu (lib/decode.py) against the PIL path: the same crop boxes from the same seed,
the pixels within the rounding of PIL's resize and equal to torchvision's crop of the decoded image;
non-JPEG files, grayscale and CMYK; bad input; a run that trains, checkpoints and resumes bit-exactly."""
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

import main as imagenet
from conftest import call, run_script, write_imagefolder
from lib import decode
from lib.data import SeededDataset
from test_device import OPTIONS, train_resume_evaluate


def hard_folder(root):
    """Train images PIL and nvJPEG can disagree on: noise, a single bright pixel, odd shapes, a
    grayscale JPEG, a CMYK JPEG and a PNG saved as .JPEG (as ImageNet has)."""
    rng = np.random.default_rng(1)
    d = os.path.join(root, "train", "a")
    os.makedirs(d)
    os.makedirs(os.path.join(root, "val", "a"))
    Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)).save(os.path.join(d, "noise.JPEG"), quality=95)
    dot = np.zeros((257, 233, 3), np.uint8)
    dot[128, 100] = 255
    Image.fromarray(dot).save(os.path.join(d, "dot.JPEG"), quality=100)
    Image.fromarray(rng.integers(0, 256, (240, 320), dtype=np.uint8)).save(os.path.join(d, "gray.JPEG"))
    Image.fromarray(rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)).convert("CMYK").save(os.path.join(d, "cmyk.JPEG"))
    Image.fromarray(rng.integers(0, 256, (230, 250, 3), dtype=np.uint8)).save(os.path.join(d, "png.JPEG"), format="PNG")
    Image.fromarray(dot).save(os.path.join(root, "val", "a", "v.JPEG"))
    return root


def samples(root, flags, epoch=0):
    args = imagenet.get_args([root, "--gpu-aug", "--device", "cpu"] + flags)
    t = imagenet.task(args)
    ds = SeededDataset(t.train, seed=3)
    items = [ds[(i, epoch)] for i in range(len(t.train))]
    return t, items


def test_same_boxes_and_pixels_on_every_path(tmp_path):
    root = hard_folder(str(tmp_path))
    _, pil = samples(root, [])
    t, enc = samples(root, ["--decode", "gpu"])
    batch, targets, index = t.collate(enc)
    assert index.tolist() == list(range(len(enc))) and targets.tolist() == [x[1] for x in pil]
    crop = decode.OnDevice(224, lambda x: x)(batch.to("cpu"))  # the device part, here on the CPU
    for (p, _, _), e, r in zip(pil, batch.items, crop):
        assert p.dtype == r.dtype == torch.uint8 and p.shape == r.shape == (3, 224, 224)
        # the crop is torchvision's RandomResizedCrop of the decoded image with PIL's box
        whole = decode_image(read_file(e.path), mode=ImageReadMode.RGB)
        assert torch.equal(r, TF.resized_crop(whole, *e.box.tolist(), [224, 224], antialias=True))
        diff = (p.int() - r.int()).abs().float()
        # the same box (a shifted box would differ by ~half the range on noise); PIL rounds differently
        assert diff.mean() < 2.0, diff.mean()
    names = [os.path.basename(s[0]) for s in t.train.samples]
    assert [e.pixels is not None for e in batch.items] == [n in ("cmyk.JPEG", "png.JPEG") for n in names]


def test_boxes_vary_with_epoch_and_seed(tmp_path):
    root = write_imagefolder(str(tmp_path), classes=1, n_train=4, size=64)
    boxes = lambda items: [e[0].box.tolist() for e in items]
    _, a = samples(root, ["--decode", "gpu"], epoch=0)
    _, b = samples(root, ["--decode", "gpu"], epoch=1)
    assert boxes(a) != boxes(b)
    _, c = samples(root, ["--decode", "gpu"], epoch=0)
    assert boxes(a) == boxes(c)


@pytest.mark.parametrize("flags, msg", [(["--decode", "gpu"], "goes with --gpu-aug"),
                                         (["--decode", "gpu", "--gpu-aug", "--cld"], "--cld"),
                                         (["--decode", "nvjpeg", "--gpu-aug"], "invalid choice")])
def test_bad_flags_one_line(imagenet_dir, flags, msg, capsys):
    code, _, err = call(imagenet.main, capsys, imagenet_dir, *flags, "--device", "cpu", "--epochs", "0")
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("damage", ["header", "data"])
def test_unreadable_file_one_line(tmp_path, damage):
    root = write_imagefolder(str(tmp_path), classes=2, n_train=4, size=64)
    path = os.path.join(root, "train", "class0", "img1.JPEG")
    raw = open(path, "rb").read()  # the header alone reads (the loader's size), the data does not decode
    open(path, "wb").write(b"\xff\xd8 truncated" if damage == "header" else raw[:len(raw) // 3])
    r = run_script("main.py", root, "--gpu-aug", "--decode", "gpu", "--device", "cpu", "-j", "0", "-b", "4",
                   "--epochs", "1", "--nce-k", "4", "--checkpoint-dir", str(tmp_path / "ck"))
    assert r.returncode == 2 and "img1.JPEG" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_gpu_decode_trains_and_resumes_exactly(tmp_path, imagenet_dir):
    data = [imagenet_dir, "--arch", "resnet18", "-b", "12", "-j", "1", "--nce-k", "8", "--low-dim", "16", "-p", "1"]
    train_resume_evaluate("main.py", data, OPTIONS["decode-gpu"], "cpu", tmp_path)  # decode on the device, here the CPU
    # a run of another --decode is another run: resuming it with the PIL path is refused
    r = run_script("main.py", *data, "--gpu-aug", "--device", "cpu", "--epochs", "3", "--checkpoint-dir", tmp_path / "b")
    assert r.returncode == 2 and "decode" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
