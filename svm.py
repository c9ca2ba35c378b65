"""Linear SVMs and low-shot SVMs on frozen features, as the papers report them (VOC07 protocol of
FAIR's benchmark / mmselfsup; see lib/svm.py), on VOC 2007 or any single-label dataset of the repo:
  python svm.py --dataset voc07 --data VOCdevkit/VOC2007 --pretrained CKPT            # feat5, mhead pooling
  python svm.py --dataset fashion-mnist --data ./data --pretrained CKPT --layer embed --knn-k 200"""
import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from datasets import num_classes as classes_of, registry
from lib import dist as du, features, knn, report, runs, svm
from lib.errors import UserError, exit_on_error
from lib import amp, options

DATASETS = ("voc07", "imagenet", *registry.SMALL)


def get_args(argv=None):
    p = options.bare(__doc__)
    p.add_argument("--dataset", default="voc07", choices=DATASETS, help="VOC 2007 (the benchmark's), or a dataset of the repo")
    p.add_argument("--data", default="./data", help="VOCdevkit/VOC2007, an ImageNet-layout folder (train/, val/) "
                   "or the CIFAR / Fashion-MNIST root of cifar.py")
    options.flag(p, options.EXEC, "--pretrained", default="", help="checkpoint: this repo's, the authors' or a "
                 "torchvision state dict (the run counts it by its sha256)")
    p.add_argument("--raw-pixels", action="store_true", help="the [0, 1] pixels as features instead of a network")
    p.add_argument("--arch", default=None, help="when the checkpoint does not say (default: inferred)")
    p.add_argument("--width", default=None, type=int, help="CIFAR ResNets: channels of the first stage")
    p.add_argument("--layer", default="feat5", help=f"one of {', '.join(features.LAYERS)}; feat1-5 are pooled as "
                   "mmselfsup's multi-head config (feat5: 2x2x2048 = 8192 dims for a ResNet50 at 224 px)")
    p.add_argument("--costs", default="1,10,100", help="SVM costs C, comma-separated (mmselfsup's list)")
    p.add_argument("--benchmark-costs", action="store_true", help="also 0.5**4 .. 0.5**19, which the benchmark's "
                   "svm_helper.parse_cost_list appends to any given list")
    p.add_argument("--folds", default=3, type=int, help="cross-validation folds for choosing C")
    p.add_argument("--svm", default=True, action=argparse.BooleanOptionalAction, help="the full SVM")
    p.add_argument("--lowshot", default=True, action=argparse.BooleanOptionalAction, help="low-shot SVMs")
    p.add_argument("--k-list", default=None, help="low-shot k values (default 1,2,4,8,16,32,64,96; a default k "
                   "some class cannot supply is skipped)")
    p.add_argument("--samples", default=svm.SAMPLES, type=int, help="independent low-shot samples per k")
    p.add_argument("--seed", default=0, type=options.seed(), help="seed of the low-shot samples and of the subsets")
    p.add_argument("--knn-k", "--knn", dest="knn_k", default=0, type=int, help="also the weighted kNN top-1 with "
                   "this k on the same layer (single-label datasets; 0 = off)")
    p.add_argument("--knn-t", default=0.1, type=float, help="kNN sigma (cifar.py's --nce-t)")
    p.add_argument("--train-subset", default=0, type=int, help="single-label: use this many training images only")
    p.add_argument("--svm-train-subset", default=0, type=int, help="single-label: fit the full SVM on this many "
                   "of the training images (a fixed random subset; kNN and low-shot draws use all of them)")
    p.add_argument("--test-subset", default=0, type=int, help="single-label: evaluate on this many test images only")
    options.flag(p, options.EXEC, "--jobs", default=1, type=int, help="processes fitting the SVMs of different classes at once")
    options.add_extraction(p, 128)
    options.flag(p, options.EXEC, "--checkpoint-dir", default=None, help="the run's folder: config.json, results.json "
                 "(default: checkpoints/svm/DATASET-LAYER-SHA, SHA the checkpoint's first 12 hex digits, or pixels)")
    return options.parse(p, argv)


def datasets(args):
    """(train, test, mean, std) with the test transform of the training script of that dataset."""
    tf = registry.eval_transform(args.dataset)
    open_ = lambda train, n: registry.open_split(args.dataset, args.data, train, tf, download=True, subset=n,
                                                 seed=args.seed)
    return (open_(True, args.train_subset), open_(False, args.test_subset), *registry.STATS[args.dataset])


def targets_of(ds, num_classes):
    t = np.asarray(ds.targets)
    return (t, False) if t.ndim == 2 else (svm.one_hot(t, num_classes), True)


def knn_top1(x_train, y_train, x_test, y_test, num_classes, k, sigma):
    bank, q = F.normalize(x_train, dim=1), F.normalize(x_test, dim=1)
    return knn.knn_classify(q, y_test, bank, y_train, num_classes, k, sigma, chunk=512)["knn_top1"]


def check_args(args):
    if args.layer not in features.LAYERS:
        raise UserError(f"unknown --layer '{args.layer}' (choose from {', '.join(features.LAYERS)})")
    low = [f"{flag} {v} (must be >= {m})" for flag, v, m in (
        ("--folds", args.folds, 2), ("--samples", args.samples, 1), ("--jobs", args.jobs, 1), ("--knn-k / --knn", args.knn_k, 0),
        ("-b", args.batch_size, 1), ("-j", args.workers, 0), ("--train-subset", args.train_subset, 0),
        ("--svm-train-subset", args.svm_train_subset, 0), ("--test-subset", args.test_subset, 0)) if v < m]
    if low:
        raise UserError("; ".join(low))
    if not 1 / 88 <= args.knn_t < math.inf:  # exp(similarity / T) of unit vectors overflows float32 below 1/88
        raise UserError(f"--knn-t must be > 0: at least 1/88 and finite (got {args.knn_t})")


def summary(ap, t_test, single, folds):
    """'mAP=A' over all classes, or, when some class could not be scored (too few training
    positives for the folds, or no test positive), a line that says over how many: a figure over
    fewer classes than the dataset has must not read as the full one."""
    n, scored = len(ap), np.isfinite(ap)
    if scored.all():
        return f"mAP={100 * np.mean(ap):.2f}", True
    untrained = int((~scored & (t_test == 1).any(0)).sum())
    why = ", ".join(w for w in (f"{untrained} with fewer than {folds} training positives" if untrained else "",
                                f"{n - scored.sum() - untrained} with no test positive" if n - scored.sum() - untrained
                                else "") if w)
    mean = f"{100 * np.mean(ap[scored]):.2f}" if scored.any() else "-"
    return f"partial mAP={mean} over {scored.sum()} of {n} classes ({why}: not the full figure)", False


def run(args):
    check_args(args)
    costs = options.numbers("--costs", args.costs, positive=True) + (list(svm.SMALL_COSTS) if args.benchmark_costs else [])
    explicit_k = args.k_list is not None
    ks = options.numbers("--k-list", args.k_list, int, positive=True) if explicit_k else list(svm.K_VALUES)
    if not args.raw_pixels and not args.pretrained:
        raise UserError("give --pretrained CKPT (or --raw-pixels)")
    if args.dataset == "voc07" and (args.train_subset or args.svm_train_subset or args.test_subset or args.knn_k):
        raise UserError("--train-subset, --svm-train-subset, --test-subset and --knn-k apply to single-label datasets")
    device = torch.device(du.resolve_device(args.device))
    train, test, mean, std = datasets(args)
    num_classes = 20 if args.dataset == "voc07" else classes_of(train)  # the dataset's, not the subset's labels
    t_train, single = targets_of(train, num_classes)
    t_test, _ = targets_of(test, num_classes)

    if args.lowshot:  # before any feature is computed; create_places_low_shot_samples.py also skips such a k
        max_k = svm.lowshot_max_k(t_train, single)
        if explicit_k and max(ks) > max_k:
            raise UserError(f"--k-list: k={max(ks)} needs more images than some class has (at most k={max_k} here)")
        for k in [k for k in ks if k > max_k]:
            print(f"lowshot note: k={k} skipped: some class cannot supply it (at most k={max_k})")
        ks = [k for k in ks if k <= max_k]

    t0 = time.time()
    loader = lambda ds: torch.utils.data.DataLoader(features.ImagesOnly(ds) if not single else ds, batch_size=args.batch_size,
                                                    num_workers=args.workers)
    if args.raw_pixels:
        run = start_run(args, None, device)
        gray = args.dataset == "fashion-mnist"  # its three channels are copies of one
        x_train, x_test = (report.pixels(loader(d), mean, std, gray)[0] for d in (train, test))
        layer = "pixels"
    else:
        model, info = features.load_backbone(args.pretrained, args.arch, args.width, device)
        features.check_fits(info, args.dataset)
        features.check_layers(info, [args.layer])
        run = start_run(args, info["sha256"], device)
        pool = "mhead" if args.layer in features.HEADS else None
        autocast = amp.setup(args.amp, device.type)[1]
        x_train, x_test = (features.extract_features(model, loader(d), device, args.layer, pool, autocast)[0]
                           for d in (train, test))
        layer = args.layer
        print(f"features: {info['arch']} '{args.pretrained}' layer {layer} ({x_train.shape[1]} dims)")
    print(f"features: {len(x_train)} train, {len(x_test)} test images in {time.time() - t0:.1f} s")

    results = {"layer": layer, "train_images": len(x_train), "test_images": len(x_test)}
    if args.knn_k:
        y = lambda t: torch.as_tensor(t.argmax(1))
        top1 = knn_top1(x_train, y(t_train), x_test, y(t_test), num_classes, args.knn_k, args.knn_t)
        print(f"knn: top1={top1:.2f} k={args.knn_k} sigma={args.knn_t} layer={layer}")
        results["knn"] = {"top1": top1, "k": args.knn_k, "sigma": args.knn_t}
    x_train, x_test = svm.normalize(x_train.numpy()), svm.normalize(x_test.numpy())
    if args.svm:
        t1 = time.time()
        rows = np.arange(len(x_train))
        if args.svm_train_subset and args.svm_train_subset < len(rows):
            rows = np.sort(np.random.default_rng(args.seed).permutation(len(rows))[:args.svm_train_subset])
        res = svm.svm_full(x_train[rows], t_train[rows], x_test, t_test, costs, args.folds, args.jobs)
        print("svm AP per class: " + " ".join(f"{100 * a:.2f}" for a in res["ap"]) +
              "  C " + " ".join(f"{c:g}" for c in res["cost"]) + f"  (time {time.time() - t1:.1f} s)")
        line, full = summary(res["ap"], t_test, single, args.folds)
        svm_top1 = svm.top1(res['scores'], t_test.argmax(1)) if single and full else None
        top1 = f"{svm_top1:.2f}" if svm_top1 is not None else "-"
        print(f"svm: {line} top1={top1} layer={layer} classes={int(np.isfinite(res['ap']).sum())}/{num_classes}")
        results["svm"] = {"line": line, "mAP": 100 * float(np.nanmean(res["ap"])) if np.isfinite(res["ap"]).any() else None,
                          "full": full, "top1": svm_top1,
                          "classes": int(np.isfinite(res["ap"]).sum()), "of": num_classes}
    if args.lowshot and ks:
        t1 = time.time()
        res = svm.svm_lowshot(x_train, t_train, x_test, t_test, ks, costs, args.samples, args.seed, single, args.jobs)
        for k, r in res.items():
            print(f"lowshot k={k}: mean {r['mean']:.2f} min {r['min']:.2f} max {r['max']:.2f} std {r['std']:.2f} "
                  f"(C={r['cost']:g}, the cost with the best mean over {args.samples} samples)")
        print(f"lowshot time: {time.time() - t1:.1f} s")
        scored = int((t_test == 1).any(0).sum())  # a class without test positives has no AP
        tail = "" if scored == num_classes else f" (partial: mean AP over the {scored} of {num_classes} classes with test positives)"
        print(("lowshot: " if not tail else "lowshot partial: ") + " ".join(f"k={k}:{r['mean']:.2f}" for k, r in res.items()) + tail)
        results["lowshot"] = {str(k): {m: r[m] for m in ("mean", "min", "max", "std", "cost")} for k, r in res.items()}
        results["lowshot_partial"] = bool(tail)
    run.results(results, say=False)  # its figures are already printed, each with its time


def start_run(args, sha256, device):
    """The run's folder (config.json now, results.json at the end), before any feature is computed."""
    who = sha256[:12] if sha256 else "pixels"
    folder = args.checkpoint_dir or os.path.join("checkpoints", "svm", f"{args.dataset}-{args.layer if sha256 else 'pixels'}-{who}")
    return runs.Run(folder, "svm.py", args, {"sha256": sha256}).start(device, tensorboard=False)


def main(argv=None):
    args = get_args(argv)
    exit_on_error(run, args)


if __name__ == "__main__":
    main()
