"""main.py --decode gpu (lib/decode.py) against the PIL path: the same crop boxes from the same seed,
the pixels within the rounding of PIL's resize and equal to torchvision's crop of the decoded image;
non-JPEG files, grayscale and CMYK; bad input; a run that trains, checkpoints and resumes bit-exactly."""
import io
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

import main as imagenet
from conftest import call, run_here, run_script, write_imagefolder
from lib import decode
from lib.data import SeededDataset
from test_device import OPTIONS, train_resume_evaluate


def hard_folder(root):
    """Train images PIL and nvJPEG can disagree on: noise, a single bright pixel, odd shapes, a
    grayscale JPEG, a CMYK JPEG, a PNG saved as .JPEG (as ImageNet has), a 16-bit PNG, a BMP, an
    animated GIF saved as .JPEG, and a JPEG whose second half is zeroed (libjpeg warns, torchvision refuses)."""
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
    ramp = np.arange(300, dtype=np.uint16)[None, :].repeat(210, 0) * 1  # 16-bit; PIL clips above 255
    Image.fromarray(ramp).save(os.path.join(d, "png16.png"))
    Image.fromarray(rng.integers(0, 256, (220, 240, 3), dtype=np.uint8)).save(os.path.join(d, "bmp.bmp"))
    frames = [Image.fromarray(rng.integers(0, 256, (200, 210, 3), dtype=np.uint8)) for _ in range(2)]
    frames[0].save(os.path.join(d, "gif.JPEG"), format="GIF", save_all=True, append_images=frames[1:])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(buf, "JPEG")
    raw = bytearray(buf.getvalue())
    raw[len(raw) // 2:-2] = bytes(len(raw) // 2 - 2 + len(raw) % 2)
    open(os.path.join(d, "zeroed.JPEG"), "wb").write(bytes(raw))
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
    names = [os.path.basename(p) for p in batch.paths]
    in_loader = {"cmyk.JPEG", "png.JPEG", "png16.png", "bmp.bmp", "gif.JPEG"}  # decoded by PIL in the loader
    assert sorted(names[i] for i in batch.pixels) == sorted(in_loader)
    # one batch is a handful of tensors, whatever its size: the bytes, their offsets, the boxes, the odd files
    assert batch.data.dim() == 1 and len(batch.offsets) == len(enc) - len(in_loader) + 1
    crop = decode.OnDevice(224, lambda x: x)(batch.to("cpu"))  # the device part, here on the CPU
    for k, ((p, _, _), r) in enumerate(zip(pil, crop)):
        assert p.dtype == r.dtype == torch.uint8 and p.shape == r.shape == (3, 224, 224)
        raw = open(batch.paths[k], "rb").read()
        whole = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB) \
            if names[k] not in in_loader | {"zeroed.JPEG"} else decode.pil_pixels(raw)  # as the PIL path reads it
        assert whole.dtype == torch.uint8
        assert torch.equal(r, TF.resized_crop(whole, *batch.boxes[k].tolist(), [224, 224], antialias=True)), names[k]
        diff = (p.int() - r.int()).abs().float()
        # the same box (a shifted box would differ by ~half the range on noise); PIL rounds differently
        assert diff.mean() < 2.0, (names[k], diff.mean())
    assert crop[names.index("png16.png")].float().std() > 10  # the 16-bit ramp stays a ramp (not white, not a traceback)


def test_loader_workers_hand_over_batches(tmp_path):
    """Through a DataLoader with workers (as training runs it), the batches decode to what the same
    samples give in-process."""
    root = hard_folder(str(tmp_path))
    t, enc = samples(root, ["--decode", "gpu"])
    ds = SeededDataset(t.train, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=[(i, 0) for i in range(len(ds))],
                                         num_workers=2, collate_fn=t.collate)
    got = torch.cat([decode.OnDevice(224, lambda x: x)(b.to("cpu")) for b, _, _ in loader])
    want = decode.OnDevice(224, lambda x: x)(t.collate(enc)[0])
    assert torch.equal(got, want)


def test_boxes_vary_with_epoch_and_seed(tmp_path):
    root = write_imagefolder(str(tmp_path), classes=1, n_train=4, size=64)
    boxes = lambda items: [e[0].box for e in items]
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
def test_unreadable_file_one_line(tmp_path, damage, capsys):
    root = write_imagefolder(str(tmp_path), classes=2, n_train=4, size=64)
    path = os.path.join(root, "train", "class0", "img1.JPEG")
    raw = open(path, "rb").read()  # the header alone reads (the loader's size), the data does not decode
    open(path, "wb").write(b"\xff\xd8 truncated" if damage == "header" else raw[:len(raw) // 3])
    r = run_here(capsys, "main.py", root, "--gpu-aug", "--decode", "gpu", "--device", "cpu", "-j", "0", "-b", "4",
                 "--epochs", "1", "--nce-k", "4", "--checkpoint-dir", str(tmp_path / "ck"))
    assert r.returncode == 2 and "img1.JPEG" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_gpu_decode_trains_and_resumes_exactly(tmp_path, capsys):
    small = write_imagefolder(str(tmp_path / "img"), classes=2, n_train=4, n_val=2)  # 224-px crops: few images
    data = [small, "--arch", "resnet18", "-b", "4", "-j", "1", "--nce-k", "4", "--low-dim", "16", "-p", "1"]
    train_resume_evaluate("main.py", data, OPTIONS["decode-gpu"], "cpu", tmp_path)  # decode on the device, here the CPU
    # a run of another --decode is another run: resuming it with the PIL path is refused
    r = run_here(capsys, "main.py", *data, "--gpu-aug", "--device", "cpu", "--epochs", "3", "--checkpoint-dir", tmp_path / "b")
    assert r.returncode == 2 and "decode" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
