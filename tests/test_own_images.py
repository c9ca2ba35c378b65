"""Your own images (issue 28): main.py on a folder without classes (flat, nested, DATA/train alone)
trains, resumes and exports an index that retrieve.py searches (an image finds itself first) and
pages without classes; the bank's uniformity against a float64 closed form; bad input is one line."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import main as main_py
import retrieve
from conftest import call
from datasets import folder
from lib import export, knn
from test_eval_trust import one_line_error

N = 100  # photos: few, as each is a 224-px crop through a ResNet-18 on the CPU
FAST = ["-j", "0", "-p", "100", "--arch", "resnet18", "--device", "cpu"]


def write_photos(root, n=N, flat=50, seed=0):
    """n photos, each its own coarse random pattern (so that even a young network tells them apart),
    the first `flat` at the top, the rest in nested folders; and a file that is not an image, ignored."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root if i < flat else os.path.join(root, f"trip{i % 3}", f"day{i % 2}")
        os.makedirs(d, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((44, 36), Image.BILINEAR)
        px = np.clip(np.asarray(coarse, dtype=np.int64) + rng.integers(-20, 20, (36, 44, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(os.path.join(d, f"img{i}." + ("png" if i % 4 == 0 else "jpg")))
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not an image")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(str(tmp_path_factory.mktemp("photos") / "holiday"))


def test_an_unlabelled_folder_trains_resumes_and_is_searched(photos, tmp_path, capsys):
    ck = tmp_path / "run"
    argv = [photos, *FAST, "-b", "50", "--nce-k", "auto", "--checkpoint-dir", ck]
    code, out, err = call(main_py.main, capsys, *argv, "--epochs", "1")
    assert code == 0, err
    assert f"{N} unlabelled images" in out and "full softmax (--nce-k 0)" in out and "bank uniformity" in out
    c = torch.load(ck / "checkpoint.pth", weights_only=True)
    assert c["images"] == folder.find_images(photos) and len(c["images"]) == N and c["args"]["nce_k"] == 0
    assert c["images"][:3] == ["img0.png", "img1.jpg", "img10.jpg"] and "trip0/day0/img54.jpg" in c["images"]
    assert not (ck / "model_best.pth").exists() and "kNN" not in out.split("no kNN")[0][-200:]
    code, out, err = call(main_py.main, capsys, *argv, "--epochs", "2")
    assert code == 0 and "resumed from" in out and torch.load(ck / "checkpoint.pth", weights_only=True)["epoch"] == 2, err
    # the index: every image of the folder, by path; an image finds itself first
    code, out, err = call(main_py.main, capsys, photos, *FAST, "--resume", ck / "checkpoint.pth", "-e", "--knn-source",
                          "recompute", "--export-features", tmp_path / "idx.pt", "--checkpoint-dir", ck)
    assert code == 0, err
    f = export.read(str(tmp_path / "idx.pt"))
    assert f["train_features"].shape == (N, 128) and len(f["val_features"]) == 0
    assert [os.path.relpath(p, photos) for p in f["train_paths"]] == c["images"]
    q = os.path.join(photos, "trip1", "day1", "img55.jpg")
    code, out, err = call(retrieve.main, capsys, "--index", tmp_path / "idx.pt", "--pretrained", ck / "checkpoint.pth",
                          "--query", q, "-k", "3", "--json", tmp_path / "r.json", "--device", "cpu")
    assert code == 0, err
    hits = json.loads((tmp_path / "r.json").read_text())["results"][0]["neighbours"]
    # itself, at similarity 1 (a network two epochs old tells images apart by little: within 1e-6 of the
    # first is first, the float noise of a batch of one against the loader's batches)
    own = [h for h in hits if h["path"] == q]
    assert own and own[0]["similarity"] == pytest.approx(1.0, abs=1e-5), hits
    assert own[0]["similarity"] >= hits[0]["similarity"] - 1e-6, hits
    assert f"  {q}" in out and "  -  " in out.splitlines()[1]  # each hit by its path; no class: '-'
    # the page without classes: no table, no marks, a similarity under each image
    code, out, err = call(retrieve.main, capsys, photos, "--features", tmp_path / "idx.pt", "--out", tmp_path / "nn",
                          "-j", "0", "-k", "4", "--num-queries", "2", "--device", "cpu", "--queries",
                          "trip1/day1/img55.jpg", "0")  # a path as the checkpoint records it: relative to DATA
    assert code == 0, err
    page = (tmp_path / "nn" / "index.html").read_text()
    assert "precision@" not in page and "figure class=\"hit\"" not in page and page.count("figure class=\"nn\"") == 2 * 2 * 4
    man = json.loads((tmp_path / "nn" / "retrieve.json").read_text())
    assert man["queries"] == [c["images"].index("trip1/day1/img55.jpg"), 0]
    assert f"image {man['queries'][0]}</h2>" in page  # the query is not among its own neighbours
    row = page.split(f"image {man['queries'][0]}</h2>")[1].split("</div>")[0]
    assert f"image {man['queries'][0]}, similarity" not in row


def test_train_alone_and_the_default_folder(photos, tmp_path, capsys):
    shutil.copytree(photos, tmp_path / "set" / "train")
    code, out, err = call(main_py.main, capsys, tmp_path / "set", *FAST, "-b", "50", "--epochs", "0", "--nce-k", "50",
                          "--checkpoint-dir", tmp_path / "c")
    assert code == 0 and f"{N} unlabelled images under" in out and "set/train'" in out, err
    assert main_py.get_args([str(tmp_path / "my photos")]).checkpoint_dir == os.path.join("checkpoints", "my photos")
    assert main_py.get_args(["/data/imagenet/"]).checkpoint_dir == os.path.join("checkpoints", "imagenet")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "set")
        assert main_py.get_args(["."]).checkpoint_dir == os.path.join("checkpoints", "set")
    finally:
        os.chdir(cwd)


def test_bad_folders_are_one_line(photos, tmp_path, capsys):
    e = lambda data, *extra: call(main_py.main, capsys, data, *FAST, "--checkpoint-dir", tmp_path / "c", *extra)[::2]
    (tmp_path / "empty").mkdir()
    one_line_error(*e(tmp_path / "empty"), "holds no image files")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    one_line_error(*e(tmp_path / "texts"), "holds no image files")
    broken = tmp_path / "broken"
    shutil.copytree(photos, broken)
    (broken / "fake.jpg").write_text("not a jpeg")
    one_line_error(*e(broken, "-b", "50"), f"1 of the {N + 1} image files under")
    one_line_error(*e(photos, "-b", "256", "--nce-k", "0"), f"fewer than one batch (-b 256); give -b {N} or less")
    one_line_error(*e(photos, "-b", "50"), f"--nce-k 4096 must be smaller than the training set ({N} images); use "
                   f"--nce-k 0 (the full softmax over all {N}), a K below {N}, or --nce-k auto")
    one_line_error(*e(photos, "--nce-k", "lots"), "invalid --nce-k 'lots'")
    one_line_error(*e(photos, "-b", "50", "--nce-k", "0", "--baselines"), "--baselines scores kNN on labelled val/")
    (tmp_path / "onlyval" / "val").mkdir(parents=True)
    one_line_error(*e(tmp_path / "onlyval"), "has val/ but no train/")
    # copies: one note, each its own instance
    dup = tmp_path / "dup"
    shutil.copytree(photos, dup)
    shutil.copy(dup / "img1.jpg", dup / "trip0" / "copy.jpg")
    code, out, err = call(main_py.main, capsys, dup, *FAST, "-b", "50", "--nce-k", "0", "--epochs", "0",
                          "--checkpoint-dir", tmp_path / "d")
    assert code == 0 and f"note: 1 of the {N + 1} images under" in out and "byte-identical copies" in out, err


def test_a_changed_folder_is_not_resumed(tmp_path, capsys):
    data = write_photos(str(tmp_path / "p"), n=20, flat=5)
    os.symlink(".", os.path.join(data, "self"))  # links back up are no loop: each real folder once
    os.symlink("..", os.path.join(data, "trip0", "up"))
    assert folder.find_images(data) == sorted(folder.find_images(data)) and len(folder.find_images(data)) == 20
    ck = os.path.join(data, "run")  # the run's own folder inside DATA is not searched for images
    argv = [data, *FAST, "-b", "10", "--nce-k", "0", "--checkpoint-dir", ck]
    code, _, err = call(main_py.main, capsys, *argv, "--epochs", "1")
    assert code == 0, err
    code, _, err = call(main_py.main, capsys, *argv, "--resume", os.path.join(ck, "checkpoint.pth"), "-e")
    assert code == 0, err
    os.rename(os.path.join(data, "img1.jpg"), os.path.join(data, "img1b.jpg"))
    one_line_error(*call(main_py.main, capsys, *argv, "--epochs", "2")[::2], "1 new, 1 gone")
    one_line_error(*call(main_py.main, capsys, *argv, "--resume", os.path.join(ck, "checkpoint.pth"), "-e")[::2],
                   "1 new, 1 gone")


def test_uniformity_against_float64_closed_forms():
    e = torch.eye(4, dtype=torch.float64)
    assert knn.uniformity(e[:2]) == pytest.approx(-4.0, abs=1e-12)  # orthogonal: ||x - y||^2 = 2, log exp(-4)
    assert knn.uniformity(torch.ones(3, 1)) == pytest.approx(0.0, abs=1e-12)  # one point: exp(0)
    x = F.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)).double(), dim=1)
    d2 = torch.cdist(x, x) ** 2
    pairs = [float(d2[i, j]) for i in range(50) for j in range(50) if i != j]
    ref = math.log(sum(math.exp(-2 * v) for v in pairs) / len(pairs))
    assert knn.uniformity(x) == pytest.approx(ref, abs=1e-10)
    assert knn.uniformity(x, t=1.0) != pytest.approx(ref, abs=1e-3)  # t counts
    big = F.normalize(torch.randn(3000, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    assert knn.uniformity(big, seed=0) != knn.uniformity(big, seed=1)  # a seeded sample of 2048 of the 3000
