"""SVM and low-shot SVM (lib/svm.py, svm.py): the wrapper against scikit-learn called directly, the
benchmark's AP, the low-shot draws, VOC's difficult images, and svm.py end to end on a generated
VOC2007 tree and CIFAR batches, bad input included."""
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

import supervised
import svm as svm_script
from conftest import TINY, run_script
from datasets.voc import CLASSES, VOC2007Instance
from lib import svm


def data(n, num_classes=3, dim=16, seed=0, difficult=0.1):
    """Features with a class signal, multi-label targets with some difficult (-1) entries."""
    rng = np.random.default_rng(seed)
    t = (rng.random((n, num_classes)) < 0.35).astype(np.int64)
    x = rng.normal(size=(n, dim)) + 1.5 * t @ rng.normal(size=(num_classes, dim))
    t[rng.random((n, num_classes)) < difficult] = -1
    return svm.normalize(x), t


def benchmark_ap(positive, scores):
    """svm_helper.calculate_ap written out as a loop over the ranked list."""
    order = np.argsort(scores)[::-1]
    tp = fp = 0
    rec, prec = [0.0], [0.0]
    for i in order:
        tp, fp = tp + positive[i], fp + (not positive[i])
        rec.append(tp / sum(positive))
        prec.append(tp / (tp + fp))
    rec, prec = rec + [1.0], prec + [0.0]
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    return sum((rec[i] - rec[i - 1]) * prec[i] for i in range(1, len(rec)) if rec[i] != rec[i - 1])


def test_voc_ap():
    assert svm.voc_ap([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    rng = np.random.default_rng(1)
    for _ in range(20):
        pos, s = rng.random(50) < 0.3, rng.normal(size=50)
        assert svm.voc_ap(pos, s) == pytest.approx(benchmark_ap(pos, s))
    assert np.isnan(svm.voc_ap([0, 0], [1.0, 2.0]))


def test_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(svm.normalize(x), [[3 / 5.00001, 4 / 5.00001], [0, 0]])


def test_svm_full_equals_sklearn_directly():
    x, t = data(90)
    xt, tt = data(40, seed=1)
    costs = (0.1, 1.0, 10.0)
    res = svm.svm_full(x, t, xt, tt, costs, folds=3)
    for c in range(t.shape[1]):
        y = np.where(t[:, c] == 1, 1, -1)  # difficult = negative in training
        clf = lambda C: LinearSVC(C=C, class_weight={1: 2, -1: 1}, loss="squared_hinge", penalty="l2",
                                  intercept_scaling=1, tol=1e-4, dual=True, max_iter=2000, random_state=0)
        cv = []
        for C in costs:  # StratifiedKFold(3) unshuffled = what cross_val_score(cv=3) uses for a classifier
            folds = StratifiedKFold(3).split(x, y)
            cv.append(np.mean([average_precision_score(y[te], clf(C).fit(x[tr], y[tr]).decision_function(x[te]))
                               for tr, te in folds]))
        assert np.allclose(res["cv"][c], cv)
        best = costs[int(np.argmax(cv))]
        assert res["cost"][c] == best
        s = clf(best).fit(x, y).decision_function(xt)
        assert np.allclose(res["scores"][:, c], s)
        keep = tt[:, c] != -1  # difficult ignored at test
        assert res["ap"][c] == pytest.approx(benchmark_ap(tt[keep, c] == 1, s[keep]))


def test_difficult_ignored_at_test_negative_in_training():
    x, t = data(80, num_classes=1, seed=2, difficult=0.0)
    xt, tt = data(60, num_classes=1, seed=3, difficult=0.0)
    hard = np.where(tt[:, 0] == 1)[0][:5]  # positives that turn difficult: high scores, not counted
    tt_d = tt.copy()
    tt_d[hard] = -1
    keep = tt_d[:, 0] != -1
    ap = svm.svm_full(x, t, xt, tt_d)["ap"][0]
    assert ap == pytest.approx(svm.svm_full(x, t, xt[keep], tt[keep])["ap"][0])
    tt_n = tt.copy()
    tt_n[hard] = 0
    assert ap != pytest.approx(svm.svm_full(x, t, xt, tt_n)["ap"][0])  # as negatives it would differ
    t_d = t.copy()
    t_d[np.where(t[:, 0] == 0)[0][:10]] = -1  # in training a difficult image is a negative
    assert np.allclose(svm.svm_full(x, t_d, xt, tt)["scores"], svm.svm_full(x, t, xt, tt)["scores"])


def test_lowshot_sampling():
    _, t = data(300, num_classes=4)
    for k in (1, 3, 8):
        d = svm.lowshot_sample(t, k, seed=0, sample=0, single_label=False)
        assert ((d == 1).sum(0) == k).all() and ((d == 0).sum(0) == 3 * k).all()  # k pos, (C-1)k neg per class
        assert ((d != -1) <= (t != -1)).all() and (d[d != -1] == t[d != -1]).all()  # never a difficult one
        assert np.array_equal(d, svm.lowshot_sample(t, k, 0, 0, False))  # same seed, same draw
        assert not np.array_equal(d, svm.lowshot_sample(t, k, 0, 1, False))  # another sample
        assert not np.array_equal(d, svm.lowshot_sample(t, k, 1, 0, False))  # another seed
    labels = np.random.default_rng(0).integers(0, 5, 200)
    oh = svm.one_hot(labels, 5)
    d = svm.lowshot_sample(oh, 4, 0, 0, single_label=True)
    drawn = (d != -1).all(1)
    assert ((d != -1).any(1) == drawn).all()  # the same images for every one-vs-rest SVM
    assert np.bincount(labels[drawn], minlength=5).tolist() == [4] * 5
    assert svm.lowshot_max_k(oh, True) == np.bincount(labels).min()
    assert svm.lowshot_max_k(t, False) == min((t == 1).sum(0).min(), ((t == 0).sum(0) // 3).min())


def test_lowshot_reports_the_cost_with_the_best_mean():
    x, t = data(200, num_classes=3, difficult=0.05)
    xt, tt = data(60, num_classes=3, seed=1)
    res = svm.svm_lowshot(x, t, xt, tt, ks=(2, 4), costs=(0.01, 1.0, 100.0), samples=3)
    for r in res.values():
        assert r["cost"] == (0.01, 1.0, 100.0)[int(np.argmax(r["by_cost"]))]
        assert r["mean"] == pytest.approx(max(r["by_cost"])) == pytest.approx(np.mean(r["samples"]))
        assert r["min"] == min(r["samples"]) and r["max"] == max(r["samples"])
        assert r["std"] == pytest.approx(np.std(r["samples"]))
    again = svm.svm_lowshot(x, t, xt, tt, ks=(2, 4), costs=(0.01, 1.0, 100.0), samples=3)
    assert again[2]["samples"] == res[2]["samples"]  # fixed seeds: the same figures


# --- VOC2007 ----------------------------------------------------------------------------

def write_voc(root, n_trainval=60, n_test=20, seed=0):
    """A VOCdevkit/VOC2007 tree: every class in >= 3 trainval and 2 test images, some only as
    'difficult' objects."""
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    splits = {"trainval": [f"{i:06d}" for i in range(n_trainval)],
              "test": [f"{i:06d}" for i in range(n_trainval, n_trainval + n_test)]}
    for split, ids in splits.items():
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        for j, i in enumerate(ids):
            objs = [(j % 20, 0), ((j + 7) % 20, 0), ((j + 13) % 20, 0) if split == "trainval" else ((j + 5) % 20, 0)]
            if j % 4 == 0:
                objs.append(((j + 3) % 20, 1))  # a difficult object
            ann = ET.Element("annotation")
            for c, diff in objs:
                o = ET.SubElement(ann, "object")
                ET.SubElement(o, "name").text = CLASSES[c]
                ET.SubElement(o, "difficult").text = str(diff)
            ET.ElementTree(ann).write(os.path.join(root, "Annotations", i + ".xml"))
            px = np.clip(rng.integers(0, 60, (48, 64, 3)) + 9 * (j % 20), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(os.path.join(root, "JPEGImages", i + ".jpg"))
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voc")
    root = write_voc(str(tmp / "VOC2007"))
    torch.manual_seed(0)  # a plain torchvision ResNet18 state dict, as users bring them
    torch.save(torchvision.models.resnet18().state_dict(), tmp / "r18.pth")
    return root, str(tmp / "r18.pth"), tmp


def test_voc_dataset(voc):
    ds = VOC2007Instance(voc[0], "trainval")
    assert len(ds) == 60 and ds.targets.shape == (60, 20)
    assert ds.targets[0, 0] == 1 and ds.targets[0, 3] == -1  # image 0: class 3 only difficult
    assert ds.targets[1, 4] == 0
    img, target, index = ds[0]
    assert img.size == (64, 48) and target.tolist() == ds.targets[0].tolist() and index == 0


def test_svm_py_on_voc07(voc):
    root, ckpt, _ = voc
    # small costs: liblinear converges in a few iterations (the default 1,10,100 run to max_iter on
    # these random-init features, minutes on a busy 2-core machine); 2 samples instead of 5
    r = run_script("svm.py", "--dataset", "voc07", "--data", root, "--pretrained", ckpt, "-j", "0", "-b", "20",
                   "--costs", "0.01,0.1", "--samples", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "layer feat5 (2048 dims)" in out  # ResNet18's feat5 pooled as the multi-head feat5: 2x2x512
    assert "lowshot note: k=4 skipped: some class cannot supply it (at most k=2)" in out
    svm_lines = [l for l in out.splitlines() if l.startswith("svm:")]  # one summary line each
    low_lines = [l for l in out.splitlines() if l.startswith("lowshot:")]
    assert len(svm_lines) == 1 and svm_lines[0].startswith("svm: mAP=") and svm_lines[0].endswith("top1=- layer=feat5 classes=20/20")
    assert len(low_lines) == 1 and low_lines[0].startswith("lowshot: k=1:") and " k=2:" in low_lines[0]
    assert "k=4" not in low_lines[0]


def test_svm_py_single_label(cifar_dir, tmp_path, capsys):
    # in-process (the VOC test above runs the script as a user does): the supervised reference of
    # the Fashion-MNIST table, one epoch, is the checkpoint evaluated
    supervised.main(["--data", cifar_dir, "--epochs", "1", "-b", "50", "--checkpoint-dir", str(tmp_path), *TINY])
    assert "supervised: top1=" in capsys.readouterr().out
    svm_script.main(["--dataset", "cifar10", "--data", cifar_dir, "--pretrained", str(tmp_path / "checkpoint.pth"),
                     "--layer", "avgpool", "--knn", "20", "--k-list", "1,2", "--samples", "2", "-j", "0",
                     "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert any(l.startswith("knn: top1=") and l.endswith("layer=avgpool") for l in lines)
    svm_line = [l for l in lines if l.startswith("svm: mAP=")][0]
    assert 0 <= float(svm_line.split("top1=")[1].split()[0]) <= 100
    assert lines[-1].startswith("lowshot: k=1:") and " k=2:" in lines[-1]


def test_svm_py_imagenet_layout(imagenet_dir, voc, capsys):
    svm_script.main(["--dataset", "imagenet", "--data", imagenet_dir, "--pretrained", voc[1], "--layer", "avgpool",
                     "--costs", "0.1", "--k-list", "1,8", "--samples", "1", "-j", "0", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert "layer avgpool (512 dims)" in lines[0] and "24 train, 12 test images" in lines[1]
    assert lines[-1].startswith("lowshot: k=1:") and " k=8:" in lines[-1]


def test_supervised_epochs_0_is_cifar_py_init(cifar_dir, tmp_path, capsys):
    """The table's untrained row: supervised.py --epochs 0 writes the weights cifar.py starts from."""
    import models
    supervised.main(["--data", cifar_dir, "--epochs", "0", "--checkpoint-dir", str(tmp_path), *TINY])
    ck = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    torch.manual_seed(0)  # engine.run: the seed, then the model
    net = models.ResNet10(low_dim=128, width=8)
    assert ck["arch"] == "ResNet10" and all(torch.equal(v, ck["state_dict"][k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("argv,msg", [
    (["--layer", "feat6"], "unknown --layer 'feat6'"),
    (["--k-list", "1,96"], "--k-list: k=96 needs more images than some class has (at most k=2 here)"),
    (["--pretrained", "{tmp}/missing.pth"], "no checkpoint file at"),
])
def test_svm_py_bad_input(voc, argv, msg, capsys):
    root, ckpt, tmp = voc
    with pytest.raises(SystemExit) as e:
        svm_script.main(["--dataset", "voc07", "--data", root, "--pretrained", ckpt, "--device", "cpu",
                         *[a.format(tmp=tmp) for a in argv]])
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], lines
