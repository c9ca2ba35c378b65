"""cifar.py's flags for this repo's Fashion-MNIST recipe study (issue 29, docs/fashion_mnist_study.md):
--holdout, --flip, --crop-min, --jitter. Their defaults are the paper's list, bit for bit; the held-out
split never meets the training images; --gpu-aug draws what the PIL list draws; a changed flag is
another run."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import cifar
from conftest import TINY, call
from lib import export

DEFAULTS = ["--holdout", "0", "--crop-min", "0.2", "--jitter", "0.4"]  # --flip: absent is its default


def _train(d, data, *extra):
    cifar.main(["--data", data, "--epochs", "1", "-b", "25", "--nce-k", "8", "--train-subset", "50",
                "--test-subset", "20", "--checkpoint-dir", str(d), *TINY, "--retrievals", "0", *extra])
    return torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=False)


@pytest.mark.parametrize("gpu_aug", [False, True])
def test_defaults_spelled_out_are_the_same_run_bit_for_bit(cifar_dir, tmp_path, gpu_aug):
    """A command without the new flags and one with them at their defaults: the same weights, bank
    and optimizer state after an epoch, on the PIL path and on --gpu-aug."""
    g = ["--gpu-aug"] if gpu_aug else []
    a = _train(tmp_path / "a", cifar_dir, *g)
    b = _train(tmp_path / "b", cifar_dir, *g, *DEFAULTS)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert torch.equal(a["memory"]["memory"], b["memory"]["memory"])
    assert a["stats"]["train_loss"] == b["stats"]["train_loss"]


def test_default_lists_are_the_papers():
    """The training list of a command without the new flags is the original's, step by step, and
    --gpu-aug's augmenter gets the same parameters as before the flags existed."""
    tf = cifar.transforms_for(cifar.get_args([]))[0].transforms
    assert [type(t).__name__ for t in tf] == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "ToTensor", "Normalize"]
    assert tf[0].scale == (0.2, 1.0) and tf[2].p == 0.2
    assert (tf[1].brightness, tf[1].contrast, tf[1].saturation, tf[1].hue) == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.4, 0.4))
    aug = cifar.gpu_augment_for(cifar.get_args(["--gpu-aug"]))
    assert (aug.scale, aug.jitter, aug.gray_p, aug.flip, aug.order) == ((0.2, 1.0), 0.4, 0.2, False, "jgf")
    new = cifar.transforms_for(cifar.get_args(["--flip", "--crop-min", "0.5", "--jitter", "0"]))[0].transforms
    assert [type(t).__name__ for t in new] == ["RandomResizedCrop", "RandomGrayscale", "RandomHorizontalFlip",
                                              "ToTensor", "Normalize"]
    assert new[0].scale == (0.5, 1.0)


def test_holdout_is_disjoint_fixed_and_the_subset_is_drawn_from_the_rest(cifar_dir):
    args = cifar.get_args(["--data", cifar_dir, "--holdout", "40", "--train-subset", "100"])
    tr_tf, te_tf = cifar.transforms_for(args)
    train, train_eval, val = cifar.splits(args, tr_tf, te_tf)
    t_ids, e_ids, v_ids = (export.source_indices(d)[1] for d in (train, train_eval, val))
    assert len(t_ids) == 100 and len(v_ids) == 40 and t_ids == e_ids
    assert not set(t_ids) & set(v_ids)  # never overlap
    assert export.source_indices(val)[0].train  # held out of the TRAINING file, not the test file
    rest, held = cifar.holdout_indices(200, 40)
    assert sorted(rest + held) == list(range(200)) and held == v_ids and set(t_ids) <= set(rest)
    assert cifar.holdout_indices(200, 40) == (rest, held)  # the same split every run, whatever --seed
    assert val.dataset.transform is te_tf and train.dataset.dataset.transform is tr_tf
    # whole rest, no --train-subset: every non-held-out image trains
    a2 = cifar.get_args(["--data", cifar_dir, "--holdout", "40"])
    assert len(cifar.splits(a2, te_tf, te_tf)[0]) == 160


def test_holdout_run_scores_the_held_out_images_and_is_its_own_run(cifar_dir, tmp_path, capsys):
    d = tmp_path / "h"
    argv = lambda holdout="40", epochs="1": ["--data", cifar_dir, "--epochs", epochs, "-b", "25", "--nce-k", "8",
                                             "--holdout", holdout, "--train-subset", "50", "--checkpoint-dir", d,
                                             *TINY, "--retrievals", "0"]
    code, out, err = call(cifar.main, capsys, *argv())
    assert code == 0, err
    ck = torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ck["memory"]["memory"].shape[0] == 50 and ck["args"]["holdout"] == 40
    # another --holdout (or another augmentation) in the same folder is another run: not resumed
    for other in ([], ["--flip"], ["--crop-min", "0.5"], ["--jitter", "0"]):
        code, _, err = call(cifar.main, capsys, *argv("30" if not other else "40", "2"), *other)
        assert code == 2 and "another run" in err, (other, err)
    code, _, err = call(cifar.main, capsys, *argv(epochs="2"))  # the same run: resumed
    assert code == 0, err


def test_holdout_refuses_the_test_set_and_bad_values(cifar_dir, capsys):
    for argv in (["--holdout", "10", "--test-subset", "5"], ["--holdout", "-1"], ["--crop-min", "0"],
                 ["--jitter", "1.1"]):
        code, _, err = call(cifar.main, capsys, "--data", cifar_dir, *argv)
        assert code == 2, argv
    code, _, err = call(cifar.main, capsys, "--data", cifar_dir, "--holdout", "200", *TINY, "--epochs", "0")
    assert code == 2 and "--holdout 200" in err


def _grey_gradients(n=48, size=28, seed=0):
    """Grey images (as Fashion-MNIST's), dark on the left, bright on the right, with varied levels."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:size, 0:size][1] / (size - 1)
    out = []
    for _ in range(n):
        lo, hi = rng.uniform(0.05, 0.35), rng.uniform(0.6, 0.95)
        g = (np.clip(lo + (hi - lo) * xx, 0, 1) * 255).astype(np.uint8)
        out.append(np.repeat(g[:, :, None], 3, 2))
    return out


def _stats(x):
    """Per batch: the share of images brighter on the left (flipped), the mean and spread of
    brightness (jitter) and the mean contrast (the crop's area: smaller crops span less gradient)."""
    left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2:].mean((1, 2, 3))
    bright, contrast = x.mean((1, 2, 3)), x.std((1, 2, 3))
    return {"flipped": (left > right).float().mean(), "bright_mean": bright.mean(), "bright_std": bright.std(),
            "contrast_mean": contrast.mean()}


@pytest.mark.parametrize("flags", [[], ["--flip"], ["--crop-min", "0.8"], ["--jitter", "0"],
                                   ["--flip", "--crop-min", "0.5", "--jitter", "0"], ["--jitter", "0.8"]])
def test_gpu_aug_draws_what_the_pil_list_draws(flags):
    """--gpu-aug with the new flags: the batch statistics of the PIL list (cifar.transforms_for) and of
    the device's augmenter (cifar.gpu_augment_for) agree; and the flags do change them."""
    torch.manual_seed(0)
    imgs, reps = _grey_gradients(), 20
    args = cifar.get_args(["--dataset", "fashion-mnist", *flags])
    pil = cifar.transforms_for(args)[0]
    mean, std = cifar.STATS["fashion-mnist"]
    undo = lambda x: x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    ref = _stats(undo(torch.stack([pil(Image.fromarray(i)) for _ in range(reps) for i in imgs])))
    batch = torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i in imgs]).repeat(reps, 1, 1, 1)
    ours = _stats(undo(cifar.gpu_augment_for(cifar.get_args(["--dataset", "fashion-mnist", "--gpu-aug", *flags]))(batch)))
    # as tests/test_gpu_aug.py: a binomial share over 960 images (4 sigma: 0.065), the rest 0.006 + 3%
    tol = {k: 0.065 if k == "flipped" else 0.006 + 0.03 * abs(float(ref[k])) for k in ref}
    assert all(abs(ours[k] - ref[k]) <= tol[k] for k in ref), {k: (round(float(ours[k]), 4), round(float(ref[k]), 4)) for k in ref}
    if flags:  # sharp enough to see the flag missing on the device: the default augmenter does not match
        plain = _stats(undo(cifar.gpu_augment_for(cifar.get_args(["--dataset", "fashion-mnist", "--gpu-aug"]))(batch)))
        assert not all(abs(plain[k] - ref[k]) <= tol[k] for k in ref)
    assert (ref["flipped"] > 0.4) == ("--flip" in flags)
    assert (ref["bright_std"] > 0.1) == ("--jitter" not in flags or flags[flags.index("--jitter") + 1] != "0")



def test_the_recipe_scripts_are_the_studys_choice():
    """scripts/quickstart.sh trains the study's chosen point (its flags, the quick start's test subset
    in place of --holdout, kNN printed at the study's sigma 0.1), and scripts/fashion_mnist_60min.sh
    its point (CHOSEN_60MIN) on all 60k images with its own epochs: a recipe changed in one place fails here."""
    import importlib.util
    import os
    from test_fast_path import ROOT, pairs, script_flags
    spec = importlib.util.spec_from_file_location("study", os.path.join(ROOT, "scripts", "fashion_mnist_study.py"))
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    runtime = {"--data", "-j", "-p", "--baselines", "--checkpoint-dir", "$@", "--amp", "--retrievals",
               "--holdout", "--test-subset", "--eval-every"}
    want = dict(pairs([*study.BASE, *study.POINTS[study.CHOSEN]], runtime))  # the point's flags win over BASE's
    want["--knn-t"] = "0.1"
    assert pairs(script_flags("scripts/quickstart.sh"), runtime) == sorted(want.items())
    want = dict(pairs([*study.BASE, *study.POINTS[study.CHOSEN_60MIN]], runtime))
    want["--knn-t"] = "0.1"
    full = sorted((f, v) for f, v in want.items() if f not in ("--train-subset", "--epochs"))
    assert [(f, v) for f, v in pairs(script_flags("scripts/fashion_mnist_60min.sh"), runtime) if f != "--epochs"] == full
    # scripts/fashion_mnist_eval.sh trains (and its supervised row copies) the quick start's recipe, exactly
    import re
    import shlex
    text = open(os.path.join(ROOT, "scripts", "fashion_mnist_eval.sh")).read()
    recipe = shlex.split(re.search(r'^RECIPE="([^"]*)"', text, re.M).group(1).replace("$DATA", "./data"))
    assert '$PY cifar.py $RECIPE --amp "$AMP"' in text
    quick = [f for f in script_flags("scripts/quickstart.sh") if f != "$@"]
    drop = {"-p", "--baselines", "--checkpoint-dir", "--amp"}
    assert pairs(recipe, drop) == pairs(quick, drop)
