"""The data path's ceiling: images/s of one loader core for the ImageNet training pipeline, the ways
this repo can run it, side by side in one run, on generated ImageNet-sized JPEGs.

    python scripts/bench_loader.py                 # 256 JPEGs, each path on one core (1 thread)
    python scripts/bench_loader.py --images 512 --json loader.json

Paths (the loader's part runs in one DataLoader worker, one thread, batches of 64, the hand-over to
the training process included):
  pil        main.py's train transform: PIL decode, RandomResizedCrop 224, grayscale, jitter, flip,
             ToTensor, Normalize (the paper's pipeline, every step on the loader core)
  pil+aug    main.py --gpu-aug: PIL decode + RandomResizedCrop 224 on the loader core; the rest
             (lib/gpu_aug.py) batched on the device: its cost per image here is on the CPU, one thread
  tensor     torchvision.io.decode_image + the same crop on the uint8 tensor (measured, not an option:
             no faster than pil+aug here)
  gpu        main.py --gpu-aug --decode gpu: the loader reads the file's bytes and the header's size,
             draws the box; decode and crop run on the device (lib/decode.py)
The JPEGs: ImageNet's typical shapes (500x375, 375x500, 500x333, 500x500, 640x480), quality 90,
smooth random scenes with noise, so that their size per pixel is of ImageNet's order (~110 KB mean).
"""
import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.io import ImageReadMode, decode_image, read_file  # noqa: E402

SHAPES = [(500, 375), (375, 500), (500, 333), (500, 500), (640, 480)]  # width x height


def make_jpegs(root, n, seed=0):
    """An ImageNet-layout folder (train/ and val/, 4 classes) of n JPEGs in train/."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(n):
        w, h = SHAPES[i % len(SHAPES)]
        low = rng.uniform(0, 255, (h // 25 + 2, w // 25 + 2, 3)).astype(np.uint8)  # a smooth scene
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 12, img.shape)  # texture: what makes real photos ~0.5 bits per pixel
        for split in ("train", "val"):
            d = os.path.join(root, split, f"c{i % 4}")
            os.makedirs(d, exist_ok=True)
            if split == "train" or i < 4:
                buf = io.BytesIO()
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
                open(os.path.join(d, f"{i:05d}.jpg"), "wb").write(buf.getvalue())
                if split == "train":
                    sizes.append(len(buf.getvalue()))
    return sizes


def per_image(ds, n, passes, collate=None):
    """Seconds per image of ds[i] for i < n through a DataLoader with one worker (one loader core;
    what crosses from the worker to the training process included), batches of 64; the best of
    `passes` passes after a first that starts the worker and warms the page cache."""
    loader = torch.utils.data.DataLoader(ds, batch_size=64, sampler=range(n), num_workers=1, collate_fn=collate,
                                         persistent_workers=True)
    best = float("inf")
    for k in range(passes + 1):
        t = time.perf_counter()
        for _ in loader:
            pass
        if k:
            best = min(best, (time.perf_counter() - t) / n)
    return best


def read_tensor(path):
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--device", default="cpu", help="where the --decode gpu batch is decoded and augmented (timed as "
                   "'device' images/s: cuda on a GPU machine)")
    p.add_argument("--json", default="")
    a = p.parse_args()
    from lib.dist import resolve_device
    device = torch.device(resolve_device(a.device))
    torch.set_num_threads(1)  # one loader core
    import main as imagenet
    from lib.gpu_aug import GPUAugment
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        sizes = make_jpegs(root, a.images)
        print(f"{a.images} JPEGs, mean {statistics.mean(sizes) / 1e3:.0f} KB; torch {torch.__version__}, 1 thread", flush=True)
        for name, flags in (("pil", []), ("pil+aug", ["--gpu-aug"]), ("tensor", None),
                            ("gpu", ["--gpu-aug", "--decode", "gpu"])):
            t = imagenet.task(imagenet.get_args([root] + (["--gpu-aug"] if flags is None else flags) + ["--device", "cpu"]))
            ds = t.train
            if flags is None:  # pil+aug's dataset, decoded by torchvision and cropped as a tensor
                ds.loader = read_tensor
                ds.transform = transforms.RandomResizedCrop(224, scale=(0.2, 1.0))
            rows[name] = {"loader_s": per_image(ds, a.images, a.passes, t.collate), "gpu_aug": t.gpu_augment is not None}
            print(name, json.dumps(rows[name]), flush=True)
        # --decode gpu's device part: decode + crop + augmentation of whole batches on --device
        t = imagenet.task(imagenet.get_args([root, "--gpu-aug", "--decode", "gpu", "--device", a.device]))
        batches = [t.collate([t.train[i] for i in range(s, min(s + 64, a.images))]) for s in range(0, a.images, 64)]
        device_s = float("inf")
        for _ in range(a.passes + 1):  # the first pass warms nvJPEG up
            t0 = time.perf_counter()
            for b, _, _ in batches:
                t.gpu_augment(b.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            device_s = min(device_s, (time.perf_counter() - t0) / a.images)
        # the device's part of --gpu-aug, per image, on this CPU (one thread): GPUAugment on a cropped batch
        aug = GPUAugment(None, imagenet.MEAN, imagenet.STD, flip=True, order="gjf")
        batch = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)
        aug(batch)
        ts = []
        for _ in range(a.passes):
            t0 = time.perf_counter()
            aug(batch)
            ts.append((time.perf_counter() - t0) / len(batch))
        aug_s = min(ts)
    print("\n| path | loader core: images/s | + the device's part on this CPU core: images/s |\n|---|---|---|")
    for name, r in rows.items():
        dev = {"pil": 0.0, "gpu": device_s}.get(name, aug_s)  # gpu: decode + crop + augmentation
        r["images_per_s"] = 1 / r["loader_s"]
        r["with_cpu_aug_per_s"] = 1 / (r["loader_s"] + dev)
        print(f"| {name} | {r['images_per_s']:.0f} | {r['with_cpu_aug_per_s']:.0f} |")
    print(f"(device augmentation alone, on this CPU: {1 / aug_s:.0f} images/s per core; --decode gpu's device part "
          f"on {device}: decode + crop + augmentation {1 / device_s:.0f} images/s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"images": a.images, "mean_kb": statistics.mean(sizes) / 1e3, "paths": rows, "aug_s": aug_s,
                       "device": str(device), "device_images_per_s": 1 / device_s}, f, indent=1)


if __name__ == "__main__":
    main()
