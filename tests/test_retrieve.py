"""retrieve.py: the nearest-neighbour page, retrieval from a saved index, the map; the search against
brute force in float64 and torch.topk on hard inputs; bad input as one line."""
import html
import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import retrieve
from conftest import call
from lib import export, knn, retrieval
from test_eval_trust import one_line_error
from test_linear import tiny_ckpt  # noqa: F401  (the shared module fixture)
from test_svm import voc  # noqa: F401

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


# --- the search -------------------------------------------------------------------------------

def hard_rows(seed=0):
    """Rows a top-k can get wrong: noise, ties everywhere, one peak, peaks in the last partial block."""
    g = torch.Generator().manual_seed(seed)
    n = 64 * 37 + 11  # not a multiple of the block
    rows = [torch.randn(n, generator=g),
            torch.randint(0, 3, (n,), generator=g).float(),          # three values: ties everywhere
            torch.zeros(n).index_fill_(0, torch.tensor([5]), 1.0),     # a single peak
            torch.full((n,), -1.0).index_fill_(0, torch.arange(n - 11, n), 2.0),  # the top in the partial block
            torch.randn(n, generator=g).sort().values,               # ascending: the top all in the last blocks
            torch.randn(n, generator=g).double()]
    return torch.stack([r.double() for r in rows])


@pytest.mark.parametrize("k", [1, 5, 20, 37, 64, 200])
def test_block_topk_is_torch_topk(k):
    sim = hard_rows()
    v, i = knn.block_topk(sim, k)
    ref_v, _ = sim.topk(k, dim=1)
    assert torch.equal(v, ref_v)  # the same values, in the same order, ties included
    assert torch.equal(sim.gather(1, i), v)  # and the columns hold them
    assert all(len(set(r.tolist())) == k for r in i)  # no column twice


def test_block_topk_small_rows_and_float32():
    sim = torch.randn(7, 100)
    for k in (1, 2, 50, 100):
        assert torch.equal(knn.block_topk(sim, k)[0], sim.topk(k, dim=1)[0])


def brute_force(q, bank, k):
    """float64 numpy: cosine similarities, sorted descending (stable), the top k."""
    qn = q.double().numpy() / np.linalg.norm(q.double().numpy(), axis=1, keepdims=True)
    bn = bank.double().numpy() / np.linalg.norm(bank.double().numpy(), axis=1, keepdims=True)
    s = qn @ bn.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def test_exact_search_against_brute_force_across_chunks(monkeypatch):
    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(3001, 16, generator=g, dtype=torch.float64), torch.randn(70, 16, generator=g, dtype=torch.float64)
    monkeypatch.setattr(knn, "BANK_CHUNK_BYTES", 4 * 16 * 333)  # bank chunks of 333 rows, a ragged last one
    sims, idx = retrieval.exact_search(F.normalize(q, dim=1), F.normalize(bank, dim=1), 25, chunk=16)
    ref_s, ref_i = brute_force(q, bank, 25)
    assert np.array_equal(idx.numpy(), ref_i)  # no ties in Gaussian noise: the very same neighbours
    assert np.allclose(sims.numpy(), ref_s, atol=1e-6)


def test_precision_at_k_closed_form():
    g = torch.Generator().manual_seed(2)
    bank, q = torch.randn(500, 8, generator=g, dtype=torch.float64), torch.randn(90, 8, generator=g, dtype=torch.float64)
    bl, ql = torch.randint(0, 4, (500,), generator=g), torch.randint(0, 4, (90,), generator=g)
    _, ref_i = brute_force(q, bank, 10)
    ref = 100 * np.mean(bl.numpy()[ref_i] == ql.numpy()[:, None])
    got = retrieval.precision_at_k(F.normalize(q, dim=1), ql, F.normalize(bank, dim=1), bl, 10, chunk=7)
    assert got == pytest.approx(ref, abs=1e-9)
    # multi-label (VOC): a retrieval counts when it shares a present class
    bm, qm = torch.rand(500, 5, generator=g) < 0.3, torch.rand(90, 5, generator=g) < 0.3
    ref = 100 * np.mean((bm.numpy()[ref_i] & qm.numpy()[:, None, :]).any(-1))
    assert retrieval.precision_at_k(F.normalize(q, dim=1), qm, F.normalize(bank, dim=1), bm, 10) == pytest.approx(ref)


def test_recall_at_k_counts_ties_as_found():
    exact_i, exact_s = torch.tensor([[0, 1, 2]]), torch.tensor([[0.9, 0.8, 0.7]])
    assert retrieval.recall_at_k(torch.tensor([[0, 1, 2]]), exact_i) == 1.0
    assert retrieval.recall_at_k(torch.tensor([[0, 5, 6]]), exact_i) == pytest.approx(1 / 3)
    # image 7 has the same similarity as the exact 3rd: as right an answer
    assert retrieval.recall_at_k(torch.tensor([[0, 1, 7]]), exact_i, torch.tensor([[0.9, 0.8, 0.7]]), exact_s) == 1.0
    assert retrieval.recall_at_k(torch.tensor([[0, 1, 7]]), exact_i, torch.tensor([[0.9, 0.8, 0.6]]), exact_s) == pytest.approx(2 / 3)


def test_faiss_flat_and_ivf_against_exact():
    pytest.importorskip("faiss", reason="faiss-cpu is an optional dependency")
    g = torch.Generator().manual_seed(3)
    bank, q = F.normalize(torch.randn(2000, 32, generator=g), dim=1), F.normalize(torch.randn(50, 32, generator=g), dim=1)
    s, i = retrieval.exact_search(q, bank, 10)
    fs, fi = retrieval.FaissIndex(bank, "flat").search(q, 10)
    assert retrieval.recall_at_k(fi, i, fs, s) == 1.0 and torch.allclose(fs, s, atol=1e-5)
    ivf = retrieval.FaissIndex(bank, "ivf", nlist=16, nprobe=16)  # every cell searched: exact
    vs, vi = ivf.search(q, 10)
    assert retrieval.recall_at_k(vi, i, vs, s) == 1.0
    ivf.index.nprobe = 1  # one cell of 16: approximate, some neighbours missed on uniform noise
    ps, pi = ivf.search(q, 10)
    assert 0 < retrieval.recall_at_k(pi, i, ps, s) < 1
    assert retrieval.default_nlist(1_281_167) == 4096


# --- the page ---------------------------------------------------------------------------------

def page(capsys, data, ckpt, out, *extra):
    return call(retrieve.main, capsys, "--data", data, "--pretrained", ckpt, "--out", out, "-j", "0",
                "--num-queries", "3", "-k", "5", *extra)


def shown(out):
    with open(os.path.join(out, "index.html")) as f:
        text = f.read()
    return text, re.findall(r'<img src="([^"]+)"', text)


def test_page_on_cifar_format(cifar_dir, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "nn"
    code, text, err = page(capsys, cifar_dir, tiny_ckpt, out, "--map", "--map-points", "40",
                           "--save-features", out / "features.pt", "--names", "NPID")
    assert code == 0, err
    html_text, imgs = shown(out)
    assert len(imgs) == 3 * 2 * (1 + 5)  # 3 queries x (NPID, raw pixels) x (query + top 5)
    assert all((out / p).is_file() and (out / p).stat().st_size > 0 for p in imgs)
    assert "NPID" in html_text and "raw pixels" in html_text and "precision@5" in html_text
    assert (out / "map.png").stat().st_size > 5000 and "map:" in text
    man = json.loads((out / "retrieve.json").read_text())
    assert sorted(set(imgs)) == sorted(f for f in man["files"] if f.startswith("thumbs/"))
    # the page's figures: precision@5 over all 60 val images and the kNN, recomputed here in float64
    f = export.read(str(out / "features.pt"))
    _, ref_i = brute_force(f["val_features"], f["train_features"], 5)
    ref = 100 * np.mean(f["train_labels"].numpy()[ref_i] == f["val_labels"].numpy()[:, None])
    npid = next(s for s in man["sources"] if s["name"] == "NPID")
    assert npid["precision"] == pytest.approx(ref, abs=1e-6)
    assert f"NPID: precision@5={ref:.2f}" in text
    # every retrieval's mark: red (miss) exactly where its class differs from the query's
    for q in man["queries"]:
        block = html_text.split(f"val image {q}, class ")[1].split("<div class='q'>")[0]
        qcls = html.unescape(block.split("<")[0])
        for kind, caption in re.findall(r'<figure class="(hit|miss)" title="train \d+: ([^,]+),', block):
            assert (kind == "miss") == (html.unescape(caption) != qcls)


def test_page_queries_vary_with_the_seed_and_rerun_replaces_its_own_files(cifar_dir, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "nn"
    assert page(capsys, cifar_dir, tiny_ckpt, out, "--no-raw")[0] == 0
    first = json.loads((out / "retrieve.json").read_text())["queries"]
    old_thumbs = set(os.listdir(out / "thumbs"))
    assert page(capsys, cifar_dir, tiny_ckpt, out, "--no-raw")[0] == 0  # the same folder: its own files
    assert json.loads((out / "retrieve.json").read_text())["queries"] == first  # seeded: the same queries
    assert page(capsys, cifar_dir, tiny_ckpt, out, "--no-raw", "--seed", "1")[0] == 0
    second = json.loads((out / "retrieve.json").read_text())["queries"]
    assert second != first
    _, imgs = shown(out)
    assert set(os.listdir(out / "thumbs")) == {os.path.basename(p) for p in imgs}  # the last page's only
    assert old_thumbs != set(os.listdir(out / "thumbs"))
    code, _, err = page(capsys, cifar_dir, tiny_ckpt, out, "--queries", "0", "7", "--no-raw")
    assert code == 0 and json.loads((out / "retrieve.json").read_text())["queries"] == [0, 7], err


def test_page_from_a_feature_file_and_a_compared_checkpoint(cifar_dir, tiny_ckpt, tmp_path, capsys):
    feats = tmp_path / "f.pt"
    assert page(capsys, cifar_dir, tiny_ckpt, tmp_path / "a", "--save-features", feats, "--no-raw")[0] == 0
    out = tmp_path / "b"
    code, text, err = call(retrieve.main, capsys, "--data", cifar_dir, "--features", feats, "--compare", tiny_ckpt, feats,
                           "--out", out, "-j", "0", "-k", "5", "--num-queries", "2")
    assert code == 0, err
    lines = [l for l in text.splitlines() if "precision@5=" in l]
    assert len(lines) == 4  # the file, the checkpoint, the file again, raw pixels
    assert lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1] == lines[2].split(":", 1)[1]  # one network, one figure


def test_page_on_an_imagenet_layout_and_the_index_query_of_a_val_image(imagenet_dir, voc, tmp_path, capsys):
    ckpt = voc[1]  # a torchvision ResNet18 state dict: its 1000-d fc output is the embedding
    out = tmp_path / "nn"
    code, text, err = call(retrieve.main, capsys, imagenet_dir, "--pretrained", ckpt, "--out", out, "-j", "0", "-k", "4",
                           "--num-queries", "2", "--save-features", tmp_path / "idx.pt", "--device", "cpu")
    assert code == 0, err
    _, imgs = shown(out)
    assert all(p.endswith(".jpg") for p in imgs) and all((out / p).is_file() for p in imgs)
    assert "raw pixels at 32 x 32" in open(out / "index.html").read()
    # the index: a val image file, embedded anew, finds what the page found for it
    man = json.loads((out / "retrieve.json").read_text())
    f = export.read(str(tmp_path / "idx.pt"))
    q = man["queries"][0]
    path = f["val_paths"][q]
    js = tmp_path / "r.json"
    code, text, err = call(retrieve.main, capsys, "--index", tmp_path / "idx.pt", "--pretrained", ckpt, "--query", path,
                           "-k", "4", "--json", js, "--device", "cpu", "--recall")
    assert code == 0, err
    got = json.loads(js.read_text())["results"][0]["neighbours"]
    ref_s, ref_i = brute_force(f["val_features"][q:q + 1], f["train_features"], 4)
    assert [h["index"] for h in got] == ref_i[0].tolist()
    assert [h["path"] for h in got] == [f["train_paths"][i] for i in ref_i[0]]
    assert "recall@4 1.0000" in text


def test_page_on_voc(voc, tmp_path, capsys):
    root, ckpt, _ = voc
    out = tmp_path / "nn"
    code, text, err = call(retrieve.main, capsys, "--dataset", "voc07", "--data", root, "--pretrained", ckpt, "--out", out,
                           "-j", "0", "-k", "3", "--num-queries", "2", "--device", "cpu", "--map", "--map-points", "10")
    assert code == 0, err
    assert "- (multi-label)" in text and (out / "map.png").is_file()
    assert "+" in open(out / "index.html").read() or "class " in open(out / "index.html").read()


def test_index_query_of_a_new_image_on_cifar(cifar_dir, tiny_ckpt, tmp_path, capsys):
    idx = tmp_path / "idx.pt"
    assert page(capsys, cifar_dir, tiny_ckpt, tmp_path / "nn", "--save-features", idx, "--no-raw")[0] == 0
    from datasets import registry
    val = registry.open_split("cifar10", cifar_dir, False)
    val[5][0].save(tmp_path / "q.png")  # a val image written as a file: the same pixels
    code, text, err = call(retrieve.main, capsys, "--index", idx, "--pretrained", tiny_ckpt, "--query", tmp_path / "q.png",
                           "-k", "6", "--json", tmp_path / "r.json")
    assert code == 0, err
    f = export.read(str(idx))
    ref_s, ref_i = brute_force(f["val_features"][5:6], f["train_features"], 6)
    got = json.loads((tmp_path / "r.json").read_text())["results"][0]["neighbours"]
    # the file embeds as the stored val image did (a batch of one: float noise; this tiny net's
    # similarities are within 1e-4 of each other, so neighbours are compared as tie-aware recall)
    sims = torch.tensor([[h["similarity"] for h in got]])
    assert np.allclose(sims.numpy(), ref_s, atol=1e-5)
    assert retrieval.recall_at_k(torch.tensor([[h["index"] for h in got]]), torch.from_numpy(ref_i), sims,
                                 torch.from_numpy(ref_s).float()) == 1.0
    try:
        import faiss  # noqa: F401
    except ImportError:
        return  # faiss-cpu is optional: test_faiss_flat_and_ivf_against_exact says it was skipped
    code, text, err = call(retrieve.main, capsys, "--index", idx, "--pretrained", tiny_ckpt, "--query",
                           tmp_path / "q.png", "-k", "6", "--backend", "faiss", "--faiss-index", "ivf", "--nlist", "4",
                           "--nprobe", "4", "--recall")
    assert code == 0 and "recall@6 1.0000" in text, err


# --- bad input --------------------------------------------------------------------------------

def test_bad_input_is_one_line(cifar_dir, cifar100_dir, tiny_ckpt, imagenet_dir, voc, tmp_path, capsys):
    idx = tmp_path / "idx.pt"
    assert page(capsys, cifar_dir, tiny_ckpt, tmp_path / "nn", "--save-features", idx, "--no-raw")[0] == 0
    e = lambda *argv: call(retrieve.main, capsys, *argv)[::2]
    # features of another dataset than the images
    one_line_error(*e("--dataset", "cifar100", "--data", cifar100_dir, "--features", idx, "--out", tmp_path / "o1",
                      "-j", "0"), "holds features of --dataset cifar10, not of cifar100")
    one_line_error(*e("--data", cifar_dir, "--test-subset", "30", "--features", idx, "--out", tmp_path / "o2", "-j", "0"),
                   "60 val images, the val split here has 30")
    bad = export.read(str(idx))
    bad["val_labels"] = (bad["val_labels"] + 1) % 10
    del bad["dataset"]
    torch.save(bad, tmp_path / "relabelled.pt")
    one_line_error(*e("--data", cifar_dir, "--features", tmp_path / "relabelled.pt", "--out", tmp_path / "o3", "-j", "0"),
                   "val labels differ")
    # an index built with another network
    other = tmp_path / "other.pth"
    ck = torch.load(tiny_ckpt, weights_only=True)
    ck["state_dict"]["fc.weight"] = ck["state_dict"]["fc.weight"] + 0.01
    torch.save(ck, other)
    from datasets import registry
    registry.open_split("cifar10", cifar_dir, False)[0][0].save(tmp_path / "q.png")
    one_line_error(*e("--index", idx, "--pretrained", other, "--query", tmp_path / "q.png"), "built with another network")
    old = export.read(str(idx))
    del old["checkpoint_sha256"]
    torch.save(old, tmp_path / "old.pt")
    one_line_error(*e("--index", tmp_path / "old.pt", "--pretrained", tiny_ckpt, "--query", tmp_path / "q.png"),
                   "does not say which network made it")
    # an image that cannot be read, K above the bank size
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    one_line_error(*e("--index", idx, "--pretrained", tiny_ckpt, "--query", tmp_path / "broken.png"), "cannot read")
    one_line_error(*e("--index", idx, "--pretrained", tiny_ckpt, "--query", tmp_path / "q.png", "-k", "201"),
                   "K must be in 1..200")
    one_line_error(*e("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", tmp_path / "o4", "-k", "201", "-j", "0"),
                   "K must be in 1..200")
    # empty, truncated and foreign feature files
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error(*e("--index", tmp_path / "empty.pt", "--pretrained", tiny_ckpt, "--query", tmp_path / "q.png"), "empty")
    data = idx.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    one_line_error(*e("--data", cifar_dir, "--features", tmp_path / "cut.pt", "--out", tmp_path / "o5", "-j", "0"),
                   "not a readable feature file")
    one_line_error(*e("--data", cifar_dir, "--features", tiny_ckpt, "--out", tmp_path / "o6", "-j", "0"),
                   "is not a feature file")
    # a network that does not fit the images, a wrong query
    one_line_error(*e(imagenet_dir, "--pretrained", tiny_ckpt, "--out", tmp_path / "o7", "-j", "0"), "does not fit")
    one_line_error(*e("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", tmp_path / "o8", "-j", "0",
                      "--queries", "60"), "neither a val index")
    # outputs: a folder of other files, an existing --save-features, an input as output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    one_line_error(*e("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", tmp_path / "mine", "-j", "0"),
                   "did not write")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    (tmp_path / "exists.pt").write_text("keep")
    one_line_error(*e("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", tmp_path / "o9", "-j", "0",
                      "--save-features", tmp_path / "exists.pt"), "exists")
    assert (tmp_path / "exists.pt").read_text() == "keep"
    one_line_error(*e("--index", idx, "--pretrained", tiny_ckpt, "--query", tmp_path / "q.png", "--json", idx),
                   "is one of the inputs")
    one_line_error(*e("--data", cifar_dir, "--out", tmp_path / "o10"), "give the features")
    assert export.read(str(idx))["checkpoint_sha256"]  # nothing given was replaced


# --- in a browser -------------------------------------------------------------------------------

def test_page_in_headless_chromium(cifar_dir, tiny_ckpt, tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("check_page", os.path.join(SCRIPTS, "check_page.py"))
    check_page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_page)
    if check_page.browser() is None:
        pytest.skip("no Chromium here (apt-get install -y chromium): the page is checked where it exists")
    out = tmp_path / "nn"
    assert page(capsys, cifar_dir, tiny_ckpt, out)[0] == 0
    images, broken, colours = check_page.check(str(out / "index.html"), str(out / "shot.png"))
    assert images == 3 * 2 * 6 and broken == 0 and colours > 16
    os.remove(out / "thumbs" / sorted(os.listdir(out / "thumbs"))[0])  # a missing image is found
    with pytest.raises(SystemExit):
        check_page.check(str(out / "index.html"), str(out / "shot2.png"))


def test_forged_manifests_and_page_files_are_never_overwritten(cifar_dir, tiny_ckpt, tmp_path, capsys):
    """The review's cases: a retrieve.json naming files outside --out (by '..' or a link), and
    --save-features onto the page's own files or as a .npz, never delete or replace a file."""
    e = lambda *argv: call(retrieve.main, capsys, *argv)[::2]
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    forge = tmp_path / "forge"
    (forge / "thumbs").mkdir(parents=True)
    os.symlink(tmp_path, forge / "thumbs" / "lnk")
    (forge / "retrieve.json").write_text(json.dumps({"files": ["thumbs/../../victim.txt", "thumbs/lnk/victim.txt",
                                                               "../victim.txt"]}))
    assert page(capsys, cifar_dir, tiny_ckpt, forge, "--no-raw")[0] == 0
    assert victim.read_text() == "keep"
    (forge / "retrieve.json").write_text(json.dumps({"files": ["../victim.pt"]}))
    (tmp_path / "victim.pt").write_text("keep")
    one_line_error(*e("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", forge, "-j", "0",
                      "--save-features", tmp_path / "victim.pt"), "exists")
    assert (tmp_path / "victim.pt").read_text() == "keep"
    for bad, msg in ((forge / "index.html", "give a .pt name"), (tmp_path / "x.npz", "give a .pt name"),
                     (forge / "thumbs" / "f.pt", "one of the page's own files")):
        one_line_error(*e("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", forge, "-j", "0",
                          "--save-features", bad), msg)
    # a manifest that is unreadable or no manifest (valid JSON of another shape) is refused, files kept
    for text in ("", "{not json", "null", "[]", '"files"'):
        (forge / "retrieve.json").write_text(text)
        one_line_error(*e("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", forge, "-j", "0"),
                       "its retrieve.json is unreadable or no manifest of retrieve.py")
        assert (forge / "retrieve.json").read_text() == text and victim.read_text() == "keep"
    # a rerun without --map removes the earlier page's map, and keeps --save-features files inside --out
    out = tmp_path / "p"
    assert page(capsys, cifar_dir, tiny_ckpt, out, "--map", "--map-points", "20", "--save-features", out / "f.pt")[0] == 0
    assert page(capsys, cifar_dir, tiny_ckpt, out, "--save-features", out / "f.pt")[0] == 0
    assert not (out / "map.png").exists() and (out / "f.pt").is_file() and (out / "f.npz").is_file()


def test_more_bad_input(cifar_dir, tiny_ckpt, tmp_path, capsys):
    idx = tmp_path / "idx.pt"
    assert page(capsys, cifar_dir, tiny_ckpt, tmp_path / "nn", "--save-features", idx, "--no-raw")[0] == 0
    e = lambda *argv: call(retrieve.main, capsys, *argv)[::2]
    base = ("--data", cifar_dir, "--pretrained", tiny_ckpt, "--out", tmp_path / "o", "-j", "0")
    one_line_error(*e(*base, "--queries", "\u00b2"), "neither a val index")  # isdigit() but not a number
    one_line_error(*e(*base, "--device", "foo"), "is not a device")
    if not torch.cuda.is_available():
        one_line_error(*e(*base, "--device", "cuda"), "no CUDA device here")
    one_line_error(*e(*base, "--recall"), "options of --index searches")
    q = ("--index", idx, "--pretrained", tiny_ckpt, "--query")
    from datasets import registry
    img = np.asarray(registry.open_split("cifar10", cifar_dir, True)[7][0])[:, :, 0]
    Image.fromarray(img.astype(np.float32)).save(tmp_path / "f.tiff")
    one_line_error(*e(*q, tmp_path / "f.tiff"), "32-bit float image")
    one_line_error(*e(*q, tmp_path / "f.tiff", "--map"), "not with --index")
    # 16-bit grey is scaled to 8 bits, as the same image in 8 bits (PIL's convert would clip it to white)
    Image.fromarray(img.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(img).save(tmp_path / "g8.png")
    outs = [call(retrieve.main, capsys, *q, tmp_path / p, "-k", "3")[1].splitlines()[1:4] for p in ("g16.png", "g8.png")]
    assert outs[0] == outs[1]


def test_ivf_that_finds_fewer_than_k_says_so(cifar_dir, tiny_ckpt, tmp_path, capsys):
    pytest.importorskip("faiss", reason="faiss-cpu is an optional dependency")
    idx = tmp_path / "idx.pt"
    assert page(capsys, cifar_dir, tiny_ckpt, tmp_path / "nn", "--save-features", idx, "--no-raw")[0] == 0
    from datasets import registry
    registry.open_split("cifar10", cifar_dir, True)[7][0].save(tmp_path / "q.png")
    code, out, err = call(retrieve.main, capsys, "--index", idx, "--pretrained", tiny_ckpt, "--query", tmp_path / "q.png",
                          "--backend", "faiss", "--faiss-index", "ivf", "--nlist", "100", "--nprobe", "1", "-k", "20",
                          "--json", tmp_path / "r.json")
    assert code == 0, err
    hits = json.loads((tmp_path / "r.json").read_text())["results"][0]["neighbours"]
    assert all(h["index"] >= 0 for h in hits) and "train index -1" not in out  # (tmp paths may hold '-1')
    if len(hits) < 20:
        assert f"only {len(hits)} of 20 neighbours found" in out
