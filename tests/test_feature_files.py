"""Feature files and what reads them (issue 26): rows named by the dataset's own index through
subsets, subsets that still show their image files, never written over an input or an existing
file, written atomically, the checkpoint recorded whichever way it was chosen, VOC's class names;
the page's reruns and small splits; seeds, the BatchNorm head's lone last image, finetune.py's folder."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import cifar
import finetune
import linear
import main as main_py
import retrieve
import supervised
import svm
from conftest import TINY, call, write_imagefolder
from datasets import InstanceSubset, registry
from datasets.voc import CLASSES
from lib import checkpoint, export
from test_eval_trust import one_line_error
from test_linear import tiny_ckpt  # noqa: F401  (the shared module fixture)
from test_svm import voc  # noqa: F401


def rt(capsys, *argv):
    return call(retrieve.main, capsys, *argv)


@pytest.fixture(scope="module")
def subset_ckpt(cifar_dir, tmp_path_factory):
    """cifar.py trained on a 50-image subset (its bank rows are subset positions)."""
    d = tmp_path_factory.mktemp("sub")
    cifar.main(["--data", cifar_dir, "--epochs", "1", "-b", "25", "--nce-k", "8", "--train-subset", "50",
                "--test-subset", "20", "--checkpoint-dir", str(d), *TINY, "--retrievals", "0"])
    return d


def subset_ids(cifar_dir, train, n):
    return InstanceSubset.random_subset(registry.open_split("cifar10", cifar_dir, train), n).indices


# --- 1. subset positions are not dataset indices ---------------------------------------------------

def test_a_subsets_feature_file_names_the_datasets_indices(cifar_dir, tiny_ckpt, tmp_path, capsys):
    idx, js = tmp_path / "idx.pt", tmp_path / "r.json"
    code, _, err = rt(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "--train-subset", "50", "--test-subset",
                      "20", "--out", tmp_path / "nn", "-j", "0", "-k", "3", "--num-queries", "2", "--no-raw",
                      "--save-features", idx)
    assert code == 0, err
    f = export.read(str(idx))
    train_ids, val_ids = subset_ids(cifar_dir, True, 50), subset_ids(cifar_dir, False, 20)
    assert train_ids != list(range(50))  # a real subset: positions and indices differ
    assert f["train_indices"].tolist() == train_ids and f["val_indices"].tolist() == val_ids
    # the page and its manifest name the dataset's val images
    man = json.loads((tmp_path / "nn" / "retrieve.json").read_text())
    assert set(man["queries"]) <= set(val_ids)
    page = (tmp_path / "nn" / "index.html").read_text()
    assert all(f"val image {q}, class" in page for q in man["queries"])
    # a training image of the subset, queried: found as the dataset's image, in the lines and the JSON
    pos = 7
    registry.open_split("cifar10", cifar_dir, True)[train_ids[pos]][0].save(tmp_path / "q.png")
    code, out, err = rt(capsys, "--index", idx, "--pretrained", tiny_ckpt, "--query", tmp_path / "q.png", "-k", "50",
                        "--json", js)
    assert code == 0, err
    hits = json.loads(js.read_text())["results"][0]["neighbours"]
    assert sorted(h["index"] for h in hits) == sorted(train_ids)
    top = max(hits, key=lambda h: h["similarity"])
    sims = export.read(str(idx))["train_features"]
    assert top["index"] == train_ids[int((torch.nn.functional.normalize(sims) @ torch.nn.functional.normalize(
        sims[pos:pos + 1]).T).argmax())]
    assert f"train index {top['index']}" in out
    # --queries takes the dataset's val indices
    code, _, err = rt(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "--train-subset", "50", "--test-subset",
                      "20", "--out", tmp_path / "nn", "-j", "0", "-k", "3", "--no-raw", "--queries", str(val_ids[3]))
    assert code == 0 and json.loads((tmp_path / "nn" / "retrieve.json").read_text())["queries"] == [val_ids[3]], err
    missing = next(i for i in range(60) if i not in val_ids)
    one_line_error(*rt(capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "--train-subset", "50", "--test-subset",
                       "20", "--out", tmp_path / "nn", "-j", "0", "--queries", str(missing))[::2], "neither a val index")


def test_cifar_export_of_a_subset_run_names_the_datasets_indices(cifar_dir, subset_ckpt, tmp_path, capsys):
    out = tmp_path / "f.pt"
    code, _, err = call(cifar.main, capsys, "--data", cifar_dir, "--resume", subset_ckpt / "checkpoint.pth",
                        "--test-only", *TINY, "--train-subset", "50", "--test-subset", "20", "--export-features", out,
                        "--checkpoint-dir", tmp_path / "ev")
    assert code == 0, err
    f = export.read(str(out))
    assert f["train_indices"].tolist() == subset_ids(cifar_dir, True, 50)
    assert f["val_indices"].tolist() == subset_ids(cifar_dir, False, 20)
    z = np.load(tmp_path / "f.npz")
    assert z["train_indices"].tolist() == f["train_indices"].tolist()


# --- 2. subsets of an image folder still show their files ------------------------------------------

def test_subsets_of_an_image_folder_are_checked_against_their_files(tmp_path, voc, capsys):
    ckpt = voc[1]  # a torchvision ResNet18 state dict
    a = write_imagefolder(str(tmp_path / "a"), n_train=6, n_val=4)
    b = tmp_path / "b"  # the same labels and counts, other files
    shutil.copytree(a, b)
    for p in list(b.rglob("*.JPEG")):
        p.rename(p.with_name("x" + p.name))
    sub = ("--train-subset", "10", "--test-subset", "6")
    code, _, err = rt(capsys, a, "--pretrained", ckpt, *sub, "--out", tmp_path / "nn", "-j", "0", "-k", "2",
                      "--num-queries", "1", "--no-raw", "--save-features", tmp_path / "fa.pt", "--device", "cpu")
    assert code == 0, err
    f = export.read(str(tmp_path / "fa.pt"))
    assert len(f["train_paths"]) == 10 and all(p.startswith(a) for p in f["train_paths"])
    one_line_error(*rt(capsys, str(b), "--features", tmp_path / "fa.pt", *sub, "--out", tmp_path / "nb", "-j", "0", "-k", "2",
                       "--device", "cpu")[::2], "other train image files")
    assert not (tmp_path / "nb" / "index.html").exists()
    # a val image of the subset, by its path
    q = f["val_paths"][2]
    code, _, err = rt(capsys, a, "--features", tmp_path / "fa.pt", *sub, "--out", tmp_path / "nq", "-j", "0",
                      "-k", "2", "--queries", q, "--device", "cpu", "--no-raw")
    assert code == 0, err
    assert json.loads((tmp_path / "nq" / "retrieve.json").read_text())["queries"] == [int(f["val_indices"][2])]


# --- 3, 4, 5, 13: writing a feature file ---------------------------------------------------------

def test_export_features_never_writes_over_an_input_or_an_existing_file(cifar_dir, tiny_ckpt, tmp_path, capsys):
    ck = tmp_path / "ck.pth"
    shutil.copy(tiny_ckpt, ck)
    sha = checkpoint.sha256(str(ck))
    base = ("--data", cifar_dir, "--test-only", *TINY, "--checkpoint-dir", tmp_path / "ev")
    e = lambda *argv: call(cifar.main, capsys, *base, *argv)[::2]
    one_line_error(*e("--resume", ck, "--export-features", ck), "give a .pt name")
    (tmp_path / "ck.pt").write_bytes(ck.read_bytes())
    one_line_error(*e("--resume", tmp_path / "ck.pt", "--export-features", tmp_path / "ck.pt", "--force"),
                   "is one of the inputs")
    assert checkpoint.sha256(str(ck)) == sha and checkpoint.sha256(str(tmp_path / "ck.pt")) == sha
    one_line_error(*e("--resume", ck, "--export-features", tmp_path / "x.npz"), "give a .pt name")
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.pt").exists()
    (tmp_path / "old.npz").write_text("keep")
    one_line_error(*e("--resume", ck, "--export-features", tmp_path / "old.pt"), "exists")
    assert (tmp_path / "old.npz").read_text() == "keep" and not (tmp_path / "old.pt").exists()
    one_line_error(*e("--resume", ck, "--force"), "--force goes with --export-features")
    code, err = e("--resume", ck, "--export-features", tmp_path / "old.pt", "--force")
    assert code == 0, err
    assert export.read(str(tmp_path / "old.pt"))["checkpoint_sha256"] == sha
    assert set(np.load(tmp_path / "old.npz")) >= {"train_features", "train_indices"}


def test_the_npz_twin_is_written_atomically(tmp_path, monkeypatch):
    out = {"train_features": torch.zeros(2, 3), "train_labels": torch.zeros(2, dtype=torch.long)}
    export.save(out, str(tmp_path / "f.pt"))
    before = (tmp_path / "f.npz").read_bytes()

    def cut(f, **arrays):  # an interrupt after part of the archive was written
        (open(f, "wb") if isinstance(f, str) else f).write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", cut)
    new = dict(out, train_features=torch.ones(2, 3))  # another output replacing the pair
    with pytest.raises(KeyboardInterrupt):
        export.save(new, str(tmp_path / "f.pt"))
    assert torch.equal(export.checkpoint.read(str(tmp_path / "f.pt"))["train_features"], torch.ones(2, 3))
    assert sorted(os.listdir(tmp_path)) == ["f.pt"]  # no partial twin, no earlier twin beside it, no temp file
    assert before[:2] == b"PK"


def test_export_of_the_latest_checkpoint_records_it(cifar_dir, tiny_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_ckpt, run / "checkpoint.pth")
    code, _, err = call(cifar.main, capsys, "--data", cifar_dir, "--test-only", *TINY, "--checkpoint-dir", run,
                        "--export-features", tmp_path / "f.pt")
    assert code == 0, err
    f = export.read(str(tmp_path / "f.pt"))
    assert f["checkpoint"] == str(run / "checkpoint.pth")
    assert f["checkpoint_sha256"] == checkpoint.sha256(str(tiny_ckpt))
    registry.open_split("cifar10", cifar_dir, True)[3][0].save(tmp_path / "q.png")
    code, out, err = rt(capsys, "--index", tmp_path / "f.pt", "--pretrained", run / "checkpoint.pth", "--query",
                        tmp_path / "q.png", "-k", "2")
    assert code == 0 and "index:" in out, err


# --- 7, 14: VOC -------------------------------------------------------------------------------------

def voc_index(voc, tmp_path, capsys, *extra):
    root, ckpt, _ = voc
    code, _, err = rt(capsys, "--dataset", "voc07", "--data", root, "--pretrained", ckpt, "--out", tmp_path / "nn",
                      "-j", "0", "-k", "3", "--num-queries", "2", "--device", "cpu", "--no-raw",
                      "--save-features", tmp_path / "v.pt", *extra)
    assert code == 0, err
    return export.read(str(tmp_path / "v.pt"))


def test_voc_feature_files_carry_class_names(voc, tmp_path, capsys):
    f = voc_index(voc, tmp_path, capsys)
    assert list(f["classes"]) == list(CLASSES)
    registry.open_split("voc07", voc[0], True)[0][0].save(tmp_path / "q.jpg")
    code, out, err = rt(capsys, "--index", tmp_path / "v.pt", "--pretrained", voc[1], "--query", tmp_path / "q.jpg",
                        "-k", "3", "--device", "cpu")
    assert code == 0, err
    hits = [l.split()[2] for l in out.splitlines()[1:4]]
    assert all(h == "-" or all(c in CLASSES for c in h.split("+")) for h in hits) and any(h != "-" for h in hits), out


def test_voc_subsets(voc, tmp_path, capsys):
    f = voc_index(voc, tmp_path, capsys, "--train-subset", "20", "--test-subset", "8")
    ids = f["train_indices"].tolist()
    assert f["train_labels"].shape == (20, 20) and len(set(ids)) == 20
    assert torch.equal(f["train_labels"], torch.as_tensor(registry.open_split("voc07", voc[0], True).targets[ids]).eq(1))


# --- 8, 12, 15: the page ------------------------------------------------------------------------------

def page_args(cifar_dir, ckpt, out):
    return ("--data", cifar_dir, "--pretrained", ckpt, "--out", out, "-j", "0", "-k", "3", "--num-queries", "2",
            "--no-raw")


def test_page_reruns_after_a_listed_file_is_gone(cifar_dir, tiny_ckpt, tmp_path, capsys):
    base = page_args(cifar_dir, tiny_ckpt, tmp_path / "nn")
    assert rt(capsys, *base, "--map", "--map-points", "10")[0] == 0
    os.remove(tmp_path / "nn" / "map.png")
    os.remove(tmp_path / "nn" / "thumbs" / sorted(os.listdir(tmp_path / "nn" / "thumbs"))[0])
    for extra in ((), ("--seed", "1"), ()):  # each rerun, not only the first
        code, _, err = rt(capsys, *base, *extra)
        assert code == 0, err


def test_a_map_of_one_val_image_is_one_line(cifar_dir, tiny_ckpt, tmp_path, capsys):
    one_line_error(*rt(capsys, *page_args(cifar_dir, tiny_ckpt, tmp_path / "nn"), "--test-subset", "1",
                       "--map")[::2], "--map needs at least 2 val images")
    assert not (tmp_path / "nn" / "index.html").exists()


def test_a_missing_feature_file_is_named_once(cifar_dir, tmp_path, capsys):
    code, _, err = rt(capsys, "--data", cifar_dir, "--features", tmp_path / "none.pt", "--out", tmp_path / "o")
    one_line_error(code, err, "no feature file at")
    assert "file file" not in err


# --- 9: --head mlp-bn and a last batch of one image -----------------------------------------------

@pytest.mark.parametrize("extra", [["--train-subset", "51"], ["--window-size", "51", "--cos"]])
def test_mlp_bn_head_with_a_last_batch_of_one(extra, cifar_dir, tmp_path, capsys):
    code, out, err = call(cifar.main, capsys, "--data", cifar_dir, "--epochs", "1", "-b", "25", "--nce-k", "8",
                          "--head", "mlp-bn", *extra, "--checkpoint-dir", tmp_path / "r", *TINY, "--retrievals", "0",
                          "--test-subset", "20")
    assert code == 0, err
    assert "1 image per process, which BatchNorm cannot normalise" in out
    assert "[0][2/2]" in out and "[0][3/3]" not in out  # 51 images in batches of 25: the lone 51st left out
    one_line_error(*call(cifar.main, capsys, "--data", cifar_dir, "--epochs", "1", "-b", "1", "--nce-k", "8",
                         "--head", "mlp-bn", *extra, "--checkpoint-dir", tmp_path / "one", *TINY)[::2],
                   "--head mlp-bn needs at least 2 images per process")
    one_line_error(*call(cifar.main, capsys, "--data", cifar_dir, "--epochs", "1", "-b", "25", "--nce-k", "0",
                         "--head", "mlp-bn", "--train-subset", "1", "--checkpoint-dir", tmp_path / "tiny", *TINY)[::2],
                   "fewer than one batch")
    # any other head sees every batch
    code, out, err = call(cifar.main, capsys, "--data", cifar_dir, "--epochs", "1", "-b", "25", "--nce-k", "8",
                          *extra, "--checkpoint-dir", tmp_path / "lin", *TINY, "--retrievals", "0", "--test-subset", "20")
    assert code == 0 and "[0][3/3]" in out and "BatchNorm" not in out, err


# --- 10: seeds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("script,argv", [
    (cifar, []), (main_py, ["DIR"]), (supervised, []), (retrieve, []), (svm, []), (linear, ["--pretrained", "x"]),
    (finetune, ["--pretrained", "x"])])
@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1"])
def test_seeds_outside_63_bits_are_one_line(script, argv, seed, capsys):
    for flag in ["--seed"] + (["--subset-seed"] if script is finetune else []):
        code, _, err = call(script.main, capsys, *argv, flag, seed)
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"argument {flag}: {flag}" in err, err


def test_the_largest_seed_runs_where_it_meets_32_bit_libraries(cifar_dir, tiny_ckpt, tmp_path, capsys):
    big = str(2**63 - 1)  # cifar.py trains with it (test_runs.py); scikit-learn's t-SNE takes 32 bits
    code, _, err = rt(capsys, *page_args(cifar_dir, tiny_ckpt, tmp_path / "nn"), "--map", "--map-points", "10",
                      "--seed", big)
    assert code == 0, err
    code, _, err = call(linear.main, capsys, "--dataset", "cifar10", "--data", cifar_dir, "--pretrained", tiny_ckpt,
                        "--epochs", "1", "-j", "0", "--cached", "--seed", big, "--checkpoint-dir", tmp_path / "lin")
    assert code == 0, err


# --- 6: finetune.py in a folder it did not make ------------------------------------------------------

def test_finetune_refuses_a_folder_of_other_files(cifar_dir, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "subset.txt").write_text("keep\n")
    (out / "log.txt").write_text("keep\n")
    for extra in ((), ("--no-auto-resume",)):
        one_line_error(*call(finetune.main, capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "-j", "0",
                             "--epochs", "1", "-b", "20", "--labels", "20%", "--lr", "0.01", "--head-lr-mult", "1",
                             "--checkpoint-dir", out, *extra)[::2], "did not write")
    assert sorted(os.listdir(out)) == ["log.txt", "subset.txt"]
    assert (out / "subset.txt").read_text() == "keep\n" and (out / "log.txt").read_text() == "keep\n"
    # a folder holding only a temp file of a write cut short is not foreign
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / ".tmp-abc.pth").write_bytes(b"partial")
    code, _, err = call(finetune.main, capsys, "--data", cifar_dir, "--pretrained", tiny_ckpt, "-j", "0", "--epochs", "1",
                        "-b", "20", "--labels", "20%", "--lr", "0.01", "--head-lr-mult", "1", "--checkpoint-dir", cut)
    assert code == 0, err
