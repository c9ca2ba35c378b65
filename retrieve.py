"""Nearest neighbours: the authors' result pages, retrieval from a saved index, a 2-D map.

  # the page: each query (a val image), then its K nearest training images per feature source
  python retrieve.py --dataset fashion-mnist --data ./data --pretrained CKPT --compare sup.pt --out nn/ --map
  python retrieve.py DATA --features feats.pt --out nn/            # an ImageNet layout, exported features
  # the index: new images embedded by the network, their nearest training images
  python retrieve.py --index nn/features.pt --pretrained CKPT --query a.png b.jpg [--backend faiss]

Sources: --pretrained checkpoints (features extracted with lib/features.py), --features / --compare
feature files (--export-features, --save-features) or checkpoints, and raw pixels (built in)."""
import json
import os
import re
import time

import numpy as np

import torch
from PIL import Image
from torchvision import transforms

from datasets import folder, num_classes as classes_of, registry
from lib import amp, checkpoint, export, features, knn, report, retrieval, runs
from lib import dist as du
from lib.errors import UserError, exit_on_error
from lib import options

DATASETS = ("imagenet", *registry.SMALL, "voc07")
RAW_SIZE = 32  # raw pixels of the 224-px datasets: compared at 32 x 32 (3072 numbers), as Tiny Images


def get_args(argv=None):
    p = options.bare(__doc__)
    p.add_argument("root", nargs="?", metavar="DATA", help="ImageNet layout: DATA/train, DATA/val")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="default: imagenet with DATA, else cifar10")
    p.add_argument("--data", default=None, help="the CIFAR / Fashion-MNIST root of cifar.py, or VOCdevkit/VOC2007")
    p.add_argument("--train-subset", default=0, type=int, help="as cifar.py's: this many training images (seed 0)")
    p.add_argument("--test-subset", default=0, type=int, help="as cifar.py's: this many test images (seed 0)")
    g = p.add_argument_group("feature sources (one row each on the page)")
    g.add_argument("--pretrained", nargs="+", default=[], metavar="CKPT", help="checkpoints; features extracted here")
    g.add_argument("--features", default=None, metavar="FILE", help="a feature file (--export-features, --save-features)")
    g.add_argument("--compare", nargs="+", default=[], metavar="FILE", help="more sources: feature files or checkpoints")
    g.add_argument("--names", default=None, help="comma-separated row names, in the order pretrained, features, "
                   "compare (default: from the file names)")
    g.add_argument("--no-raw", action="store_true", help="leave out the raw-pixel row")
    options.flag(g, options.EXEC, "--save-features", default=None, metavar="FILE",
                   help="write the first --pretrained's features as a feature file (an --index for later queries)")
    g = p.add_argument_group("the page")
    options.flag(g, options.EXEC, "--out", default="nn", help="the page's folder: index.html, thumbs/, map.png, retrieve.json")
    g.add_argument("-k", "--top-k", dest="k", default=20, type=int, help="retrievals per query (and precision@K)")
    g.add_argument("--num-queries", default=16, type=int, help="random val images as queries (seeded)")
    g.add_argument("--queries", nargs="+", default=None, metavar="I|PATH",
                   help="the queries: val indices, or val image paths (image folders)")
    g.add_argument("--seed", default=0, type=options.seed(), help="the seed of the queries and of the map's subset")
    g.add_argument("--knn-k", default=200, type=int, help="neighbours of the kNN figure")
    g.add_argument("--knn-t", default=0.1, type=float, help="kNN sigma (cifar.py's --nce-t)")
    g = p.add_argument_group("the map")
    g.add_argument("--map", action="store_true", help="also out/map.png: a 2-D map of the val features per source")
    g.add_argument("--map-points", default=2000, type=int, help="val images on the map (a seeded subset)")
    g.add_argument("--map-method", default="tsne", choices=["tsne", "umap"], help="umap needs umap-learn")
    g.add_argument("--projector", default=0, type=int, metavar="N",
                   help="also the TensorBoard projector of N val features of the first source (out/tb)")
    g = p.add_argument_group("the index")
    g.add_argument("--index", default=None, metavar="FILE", help="a feature file to search (with --query, --pretrained)")
    g.add_argument("--query", nargs="+", default=[], metavar="IMAGE", help="image files to embed and look up")
    g.add_argument("--backend", default="exact", choices=["exact", "faiss"],
                   help="exact: chunked matrix products (torch, on the GPU if there is one); faiss: faiss-cpu")
    g.add_argument("--faiss-index", default="flat", choices=["flat", "ivf"], help="FAISS: exact flat or IVF cells")
    g.add_argument("--nlist", default=None, type=int, help="IVF cells (default ~4 sqrt(N), a power of two)")
    g.add_argument("--nprobe", default=32, type=int, help="IVF cells searched per query")
    g.add_argument("--recall", action="store_true", help="also the recall@K of the backend against exact search")
    options.flag(g, options.EXEC, "--json", default=None, metavar="FILE", help="write the results as JSON")
    g = p.add_argument_group("run")
    options.add_extraction(g, 256)
    return options.data_from_args(options.parse(p, argv))


def check_args(args):
    low = [f"{f} {v} (must be >= {m})" for f, v, m in (
        ("-k", args.k, 1), ("--num-queries", args.num_queries, 1), ("--knn-k", args.knn_k, 1),
        ("--map-points", args.map_points, 3), ("--projector", args.projector, 0), ("--nprobe", args.nprobe, 1),
        ("-b", args.batch_size, 1), ("-j", args.workers, 0), ("--train-subset", args.train_subset, 0),
        ("--test-subset", args.test_subset, 0)) if v < m]
    if args.nlist is not None and args.nlist < 1:
        low.append(f"--nlist {args.nlist} (must be >= 1)")
    if low:
        raise UserError("; ".join(low))
    if not 1 / 88 <= args.knn_t < float("inf"):
        raise UserError(f"--knn-t must be at least 1/88 and finite (got {args.knn_t})")
    if args.index:
        if not args.query or not args.pretrained:
            raise UserError("--index needs --query IMAGE [...] and --pretrained CKPT (the network that built it)")
        if len(args.pretrained) > 1 or args.features or args.compare:
            raise UserError("--index searches one feature file with one network: give one --pretrained, "
                            "no --features / --compare")
        if args.save_features or args.map or args.projector or args.queries or args.names:
            raise UserError("--save-features, --map, --projector, --queries and --names make a page: not with --index")
        if args.json and os.path.isdir(args.json):
            raise UserError(f"--json '{args.json}' is a folder")
        if args.json and os.path.realpath(args.json) in {os.path.realpath(p) for p in [args.index, *args.pretrained,
                                                                                         *args.query]}:
            raise UserError(f"--json '{args.json}' is one of the inputs")
    else:
        if args.query:
            raise UserError("--query goes with --index FILE (a feature file to search)")
        given = {k for k, v in (("--json", args.json), ("--recall", args.recall), ("--backend faiss", args.backend == "faiss"),
                                ("--faiss-index ivf", args.faiss_index != "flat"), ("--nlist", args.nlist is not None)) if v}
        if given:
            raise UserError(f"{', '.join(sorted(given))}: options of --index searches, not of the page")
        if not (args.pretrained or args.features or args.compare):
            raise UserError("give the features: --pretrained CKPT, --features FILE or --compare FILE")
        if args.dataset == "imagenet" and not args.root:
            raise UserError("retrieve.py: give DATA (ImageNet layout), or --dataset with --data")
        if args.save_features and not args.pretrained:
            raise UserError("--save-features writes the features of the first --pretrained checkpoint")


def device_of(args):
    return torch.device(args.device)


# --- the data ---------------------------------------------------------------------------------

def open_splits(args, transform, images=None):
    """{'train', 'val'}: the dataset's splits; for a folder of your own images (no train/ + val/ class
    folders) one unlabelled set that is both (queries are its images, searched among the others);
    `images` its file list when known (the raw pictures reopen it without checking it again)."""
    kind, root = folder.layout(args.root) if args.dataset == "imagenet" else ("labelled", None)
    if kind == "unlabelled":
        if args.train_subset or args.test_subset:
            raise UserError("--train-subset / --test-subset take labelled splits; DATA here is a folder of unlabelled images")
        ds = folder.UnlabelledImages(root, images, transform) if images else folder.open_unlabelled(root, transform)
        return {"train": ds, "val": ds}
    open_ = lambda train, n: registry.open_split(args.dataset, args.root or args.data, train, transform,
                                                 download=True, subset=n)
    return {"train": open_(True, args.train_subset), "val": open_(False, args.test_subset)}


def as_labels(targets):
    """Long N (one class per image) or bool N x C (VOC's 1 / 0 / -1 states: the present classes)."""
    t = torch.as_tensor(targets)
    return t.eq(1) if t.dim() == 2 else t.long()


def class_names(ds, labels):
    return export.class_names(ds) or [str(c) for c in range(int(labels.max()) + 1)]


def loader(args, ds):
    return torch.utils.data.DataLoader(features.ImagesOnly(ds), batch_size=args.batch_size, num_workers=args.workers)


# --- the sources ------------------------------------------------------------------------------

def checkpoint_source(args, path, data, autocast, loaded):
    """A checkpoint's features of both splits; `loaded`: its (model, info), read_checkpoint's."""
    model, info = loaded
    print(f"=> features of '{path}' ({info['arch']}, {info['low_dim']}-d)", flush=True)
    f = {s: features.extract_features(model, loader(args, data[s]), device_of(args), "embed", autocast=autocast)[0]
         for s in ("train", "val")[:1 if data["val"] is data["train"] else 2]}
    return dict(train=f["train"], val=f.get("val", f["train"]), path=path, sha256=info["sha256"], arch=info["arch"])


def read_checkpoint(args, path):
    model, info = features.load_backbone(path, device=device_of(args))
    features.check_fits(info, args.dataset)
    features.check_layers(info, ["embed"])
    return model, info


def file_source(args, path, data, labels, names, obj=None):
    """A feature file (or what was read of it, `obj`), checked against the images it is shown with:
    the same dataset, sizes, labels, class names and (image folders) file names, or one line saying
    which differs."""
    f = export.read(path) if obj is None else export.check(obj, path)
    what = f"'{path}' holds features of"
    if data["val"] is data["train"]:  # an unlabelled folder: the file's train rows are its images
        f = dict(f, val_features=f["train_features"], val_labels=f["train_labels"], val_paths=f.get("train_paths"))
    if f.get("dataset") and f["dataset"] != args.dataset:
        raise UserError(f"{what} --dataset {f['dataset']}, not of {args.dataset}")
    for s in ("train", "val"):
        n, have = len(data[s]), len(f[f"{s}_features"])
        if n != have:
            raise UserError(f"{what} {have} {s} images, the {s} split here has {n} (another dataset or subset: "
                            "--train-subset / --test-subset as when it was written)")
        theirs = as_labels(f[f"{s}_labels"])
        if theirs.shape != labels[s].shape or not torch.equal(theirs, labels[s]):
            raise UserError(f"{what} images whose {s} labels differ from this dataset's (another dataset, subset "
                            "or class order)")
        paths, here = f.get(f"{s}_paths"), export.image_paths(data[s])
        if (paths is None) != (here is None) or (here is not None and list(map(source_name, paths)) != list(map(source_name, here))):
            raise UserError(f"{what} other {s} image files than '{args.root or args.data}' holds")
    if f.get("classes") and list(f["classes"]) != names:
        raise UserError(f"{what} classes {list(f['classes'])[:3]}..., this dataset has {names[:3]}...")
    print(f"=> features from '{path}' ({tuple(f['train_features'].shape)} train, {f.get('train_source', '?')})")
    return dict(train=f["train_features"], val=f["val_features"], path=path, arch=f.get("arch"))


def raw_source(args, data):
    """The [0, 1] pixels (at RAW_SIZE for the 224-px datasets), the paper's "raw image features"."""
    mean, std = registry.STATS[args.dataset]
    size = None if args.dataset in registry.SMALL else RAW_SIZE
    f = {s: report.pixels(loader(args, data[s]), mean, std, size=size)[0]
         for s in ("train", "val")[:1 if data["val"] is data["train"] else 2]}
    return dict(train=f["train"], val=f.get("val", f["train"]), path=None, arch=None)


def source_name(path):
    """checkpoints/quickstart/checkpoint.pth -> 'quickstart/checkpoint.pth'; of an image, CLASS/FILE:
    what two copies of one image folder have in common."""
    return "/".join(os.path.normpath(path).split(os.sep)[-2:])


def load_sources(args, data, labels, names, autocast):
    specs = [("ckpt", p) for p in args.pretrained] + ([("file", args.features)] if args.features else []) + \
            [("any", p) for p in args.compare]
    given = args.names.split(",") if args.names else None
    if given is not None and len(given) != len(specs):
        raise UserError(f"--names gives {len(given)} names for {len(specs)} sources (pretrained, features, compare)")
    # every source read and checked first (a feature file that does not fit is said before any
    # extraction), then the checkpoints' features extracted
    out, models = [None] * len(specs), {}
    for j, (kind, path) in enumerate(specs):
        obj = None
        if kind == "any":  # a feature file, else a checkpoint
            obj = checkpoint.load_object(path, prefix="--compare: ")[0]
            kind = "file" if isinstance(obj, dict) and "train_features" in obj else "ckpt"
        if kind == "ckpt":
            models[j] = read_checkpoint(args, path)
        else:
            out[j] = file_source(args, path, data, labels, names, obj)
    for j, loaded in models.items():
        out[j] = checkpoint_source(args, specs[j][1], data, autocast, loaded)
    for j, s in enumerate(out):
        s["name"] = given[j] if given else source_name(specs[j][1])
    if not args.no_raw:
        out.append(dict(raw_source(args, data), name="raw pixels"))
    for s in out:
        s["train"], s["val"] = retrieval.normalize(s["train"]), retrieval.normalize(s["val"])
    return out


# --- the queries ------------------------------------------------------------------------------

def pick_queries(args, val):
    """Positions in the val split (a --test-subset's positions are not the dataset's indices): drawn
    with --seed, or --queries given as the dataset's val indices or val image paths."""
    n = len(val)
    if not args.queries:
        return torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[:args.num_queries].tolist()
    base, ids = export.source_indices(val)
    by_index = {d: i for i, d in enumerate(ids)}
    by_path = {os.path.realpath(p): i for i, p in enumerate(export.image_paths(val) or [])}
    top = getattr(base, "root", ".")  # a path may be given relative to the split's folder
    out = []
    for q in args.queries:
        found = [by_path[p] for p in (os.path.realpath(q), os.path.realpath(os.path.join(top, q))) if p in by_path]
        if q.isdecimal() and q.isascii() and int(q) in by_index:
            out.append(by_index[int(q)])
        elif found:
            out.append(found[0])
        else:
            where = f"one of the {n} of --test-subset" if args.test_subset else f"0..{n - 1}"
            val_ = "" if isinstance(base, folder.UnlabelledImages) else "val "  # no val split
            raise UserError(f"--queries '{q}' is neither a {val_}index ({where}) nor a {val_}image of this split (a path "
                            f"as given, or under '{top}')")
    return out


# --- the page ---------------------------------------------------------------------------------

PAGE_FILES = ("index.html", "retrieve.json", "map.png", "screenshot.png", "config.json", "results.json")  # the page's own names in --out
THUMB = re.compile(r"thumbs/(train|val)-\d+\.(png|jpg)")


def own_files(out, manifest):
    """The files of an earlier page that a rerun may replace: the manifest's entries that are plain
    files inside `out` (no '..', no link), never anything a forged or stale manifest names elsewhere;
    a listed file that is gone is not one (a rerun then has nothing of it to remove)."""
    root = os.path.realpath(out)
    mine = set()
    for f in manifest.get("files", []) if isinstance(manifest, dict) else []:
        p = os.path.join(out, str(f))
        if os.path.islink(p) or not os.path.isfile(p) or os.path.realpath(p) != os.path.join(root, os.path.normpath(str(f))) \
                or not os.path.realpath(p).startswith(root + os.sep):
            continue
        mine.add(os.path.normpath(str(f)))
    return mine


def inside(path, folder):
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


def page_writes(path, out):
    """Is `path` one of the files a page writes in `out` (its own names, thumbs/, tb/)?"""
    return os.path.realpath(path) in {os.path.realpath(os.path.join(out, f)) for f in PAGE_FILES} \
        or inside(path, os.path.join(out, "thumbs")) or inside(path, os.path.join(out, "tb"))


def check_out(args):
    """The page's folder: new, empty, or one retrieve.py wrote (its retrieve.json): never a folder of
    other files; no input among the files it writes; --save-features never onto the page's own files.
    Returns the earlier page's own files (relative to --out)."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out '{out}' is a file, not a folder")
    own = os.path.isfile(os.path.join(out, "retrieve.json")) or runs.script_of(os.path.join(out, "config.json")) == "retrieve.py"
    if os.path.isdir(out) and os.listdir(out) and not own:  # config.json alone: a page cut off before its manifest
        raise UserError(f"--out '{out}' holds files that retrieve.py did not write; give a new or empty folder")
    old = {}
    if os.path.isfile(os.path.join(out, "retrieve.json")):
        old = runs.read_json(os.path.join(out, "retrieve.json"))
        if not isinstance(old, dict):
            raise UserError(f"--out '{out}': its retrieve.json is unreadable or no manifest of retrieve.py; "
                            "give a new or empty folder")
    mine = own_files(out, old)
    given = [p for p in [*args.pretrained, args.features, *args.compare] if p]
    for p in given:
        if page_writes(p, out):
            raise UserError(f"'{p}' lies among the files this page writes in '{out}'; move it out, or give another --out")
    if args.save_features:  # only the files of this page's earlier run in --out are replaced; never an input
        export.check_target(args.save_features, "--save-features", given, force_flag=None,
                            replaceable={os.path.realpath(os.path.join(out, f)) for f in mine})
        if page_writes(args.save_features, out):
            raise UserError(f"--save-features '{args.save_features}' is one of the page's own files; give another name")
    checkpoint.check_writable_dir(out, "--out")
    return mine


def save_features(args, s, data, labels):
    if data["val"] is data["train"]:  # an unlabelled folder: its images are the index, no val split
        data, labels, s = dict(data, val=None), dict(labels, val=labels["val"][:0]), dict(s, val=s["val"][:0])
    out = export.record(s["train"], labels["train"], s["val"], labels["val"], data["train"], data["val"],
                        train_source="recompute", arch=s["arch"], checkpoint=s["path"], checkpoint_sha256=s["sha256"],
                        dataset=args.dataset, train_subset=args.train_subset, test_subset=args.test_subset)
    npz = export.save(out, args.save_features)
    print(f" * features of '{s['path']}' -> '{args.save_features}', '{npz}' (an --index for retrieve.py --query)")
    # the page's own files only when in --out: one outside is never replaced by a rerun
    return [os.path.relpath(os.path.realpath(p), os.path.realpath(args.out)) for p in (args.save_features, npz)
            if inside(p, args.out)]


def knn_figure(s, labels, num_classes, args):
    """(the kNN top-1 as printed, the figure; None for multi-label sets)."""
    if labels["train"].dim() == 2:
        return "- (multi-label)", None
    k = min(args.knn_k, len(s["train"]))
    r = knn.knn_classify(s["val"], labels["val"], s["train"], labels["train"], num_classes, k, args.knn_t)
    return f"{r['knn_top1']:.2f} (k={k})", r["knn_top1"]


def page(args):
    mine = check_out(args)
    run = runs.Run(args.out, "retrieve.py", args).check_owner()
    autocast = amp.setup(args.amp, device_of(args).type)[1]
    data = open_splits(args, registry.eval_transform(args.dataset))
    labelled = data["val"] is not data["train"]
    retrieval.check_k(args.k, len(data["train"]) - (not labelled))  # unlabelled: the query is not its own neighbour
    if args.map and len(data["val"]) < 2:  # t-SNE's perplexity must stay below the number of points
        raise UserError(f"--map needs at least 2 val images; the val split here has {len(data['val'])}")
    labels = {s: as_labels(data[s].targets) for s in data}
    names = class_names(data["train"], labels["train"])
    num_classes = len(names) if labels["train"].dim() == 2 else classes_of(data["train"])
    queries = pick_queries(args, data["val"])
    sources = load_sources(args, data, labels, names, autocast)
    run.start(device_of(args), tensorboard=False)  # every input checked: the page's files from here on
    files = []
    if args.save_features:
        files += save_features(args, sources[0], data, labels)
    t0 = time.time()
    for s in sources:
        dev = device_of(args)
        bank, val = s["train"].to(dev), s["val"].to(dev)
        if not labelled:  # the queries' neighbours among the other images; no classes, no figures
            s["sims"], s["idx"] = retrieval.others(val[queries], bank, queries, args.k)
            s["precision"], s["knn"] = None, "-"
            print(f"{s['name']}: {len(queries)} queries, top {args.k} of {len(bank)} images (no labels: no precision, no kNN)")
            continue
        sims, idx = retrieval.exact_search(val, bank, args.k)  # every val image: the precision, and the rows shown
        s["precision"] = retrieval.precision_of(idx, labels["val"], labels["train"])
        s["knn"], s["knn_top1"] = knn_figure(dict(s, train=bank, val=val), {k: v.to(dev) for k, v in labels.items()},
                                             num_classes, args)
        s["sims"], s["idx"] = sims[queries], idx[queries]
        print(f"{s['name']}: precision@{args.k}={s['precision']:.2f} knn_top1={s['knn']} ({len(val)} val images)")
    print(f"search: {time.time() - t0:.1f} s")
    raw = open_splits(args, None, None if labelled else data["train"].rel)
    thumbs = retrieval.Thumbnails(args.out, raw, small=args.dataset in registry.SMALL)
    title = f"Nearest neighbours: {args.dataset if labelled else args.root}, {len(queries)} queries, top {args.k} of " \
            f"{len(data['train'])} {'training ' if labelled else ''}images"
    notes = [(f"{len(data['train'])} training and {len(data['val'])} val images" if labelled else
              f"{len(data['train'])} unlabelled images, each query searched among the others")
             + "; cosine similarity; queries "
             + (f"given (--queries)" if args.queries else f"drawn with seed {args.seed}")
             + ("; raw pixels at 32 x 32" if args.dataset not in registry.SMALL and not args.no_raw else ""),
             "sources: " + "; ".join(s["name"] if s["name"] == s["path"] else f"{s['name']}: {s['path'] or 'the [0, 1] pixels'}"
                                     for s in sources)]
    ids = {s: export.source_indices(data[s])[1] for s in data}  # what the page and its manifest name
    retrieval.write_page(args.out, title, notes, sources, queries, labels["val"], labels["train"], names, thumbs,
                         pixelated=args.dataset in registry.SMALL, ids=ids, labelled=labelled)
    files += ["index.html"] + list(thumbs.written.values())
    if args.map:
        n, secs = retrieval.write_map(os.path.join(args.out, "map.png"), [(s["name"], s["val"]) for s in sources],
                                      labels["val"], names, args.map_points, args.seed, args.map_method)
        files.append("map.png")
        print(f" * map: {os.path.join(args.out, 'map.png')} ({args.map_method}, {n} val images, {secs:.0f} s)")
    if args.projector:
        pick = retrieval.map_subset(len(data["val"]), args.projector, args.seed)
        mean, std = registry.STATS[args.dataset]
        imgs = report.denormalize(torch.stack([data["val"][i][0] for i in pick.tolist()]), mean, std).clamp(0, 1)
        lab = labels["val"][pick]
        export.projector(os.path.join(args.out, "tb"), sources[0]["val"][pick],
                         lab if lab.dim() == 1 else lab.float().argmax(1), imgs, names)
        print(f" * projector: tensorboard --logdir {os.path.join(args.out, 'tb')}")
    files += ["config.json", "results.json"]
    rel = set(files)  # names relative to --out
    for f in mine - rel:  # the last page's thumbnails and map that this one does not have
        if THUMB.fullmatch(f) or f == "map.png":
            os.remove(os.path.join(args.out, f))
    run.results(say=False, figures={"k": args.k, "queries": len(queries), "sources": [
        dict(name=s["name"], path=s["path"], precision=s["precision"], knn_top1=s.get("knn_top1"), knn=s["knn"])
        for s in sources]})
    retrieval.write_manifest(args.out, dict(files=sorted(rel), dataset=args.dataset, k=args.k,
                                            queries=[ids["val"][q] for q in queries],
                                            sources=[dict(name=s["name"], path=s["path"], precision=s["precision"],
                                                          knn=s["knn"]) for s in sources]))
    print(f"page: {os.path.join(args.out, 'index.html')} ({len(queries)} queries x {len(sources)} sources x top {args.k}, "
          f"{len(thumbs.written)} thumbnails)")


# --- the index --------------------------------------------------------------------------------

def read_image(path):
    """An image file as 8-bit RGB: 16-bit grey scaled to 8 bits (PIL's convert would clip it to white);
    32-bit integer or float images are refused, their range is not known."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16"):
                return Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L").convert("RGB")
            if im.mode in ("I", "F"):
                raise UserError(f"--query: '{path}' is a 32-bit {'float' if im.mode == 'F' else 'integer'} image "
                                "of unknown range; save it with 8 (or 16) bits per channel")
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"--query: cannot read '{path}' as an image ({type(e).__name__}: {str(e)[:120]})") from None


def index_search(args):
    idx = export.read(args.index)
    dataset = idx.get("dataset") or args.dataset
    model, info = features.load_backbone(args.pretrained[0], device=device_of(args))
    features.check_layers(info, ["embed"])
    features.check_fits(info, dataset)
    made_by = idx.get("checkpoint_sha256")
    if made_by is None:
        raise UserError(f"--index '{args.index}' does not say which network made it (no checkpoint_sha256); "
                        "rebuild it with retrieve.py --save-features or --export-features")
    if made_by != info["sha256"]:
        raise UserError(f"--index '{args.index}' was built with another network ('{idx.get('checkpoint')}', sha256 "
                        f"{made_by[:12]}), not '{args.pretrained[0]}' ({info['sha256'][:12]})")
    if idx.get("train_source") == "bank":
        print("note: the index holds memory-bank features (running averages), not the network's own")
    bank = retrieval.normalize(idx["train_features"]).to(device_of(args))
    retrieval.check_k(args.k, len(bank))
    tf = registry.image_transform(dataset)
    imgs = torch.stack([tf(read_image(p)) for p in args.query])
    with torch.no_grad(), amp.autocast_or_nothing(amp.setup(args.amp, device_of(args).type)[1]):
        q = retrieval.normalize(model(imgs.to(device_of(args))))
    t0 = time.time()
    if args.backend == "faiss":
        index = retrieval.FaissIndex(bank, args.faiss_index, args.nlist, args.nprobe, args.seed)
        sims, nn = index.search(q, args.k)
        what = f"faiss {args.faiss_index}" + (f" (nlist {index.nlist}, nprobe {index.index.nprobe})"
                                              if args.faiss_index == "ivf" else "")
    else:
        sims, nn = retrieval.exact_search(q, bank, args.k)
        what = f"exact ({bank.device.type})"
    secs = time.time() - t0
    names = list(idx.get("classes") or [])
    paths = idx.get("train_paths")
    labels = torch.as_tensor(idx["train_labels"])
    ids = idx.get("train_indices")  # each row's index in its dataset (a subset's row 0 may be image 111)
    ids = ids.tolist() if torch.is_tensor(ids) and len(ids) == len(bank) else list(range(len(bank)))
    results = []
    for r, path in enumerate(args.query):
        hits = [dict(rank=j + 1, index=ids[int(i)], similarity=float(s), cls=retrieval.class_text(labels[int(i)], names),
                     path=paths[int(i)] if paths else None) for j, (s, i) in enumerate(zip(sims[r], nn[r])) if i >= 0]
        results.append(dict(query=path, neighbours=hits))
        print(f"query {path}:")
        if len(hits) < args.k:  # an IVF search finds fewer than K when the probed cells hold fewer images
            print(f"  note: only {len(hits)} of {args.k} neighbours found in the {args.nprobe} cells searched; "
                  "raise --nprobe")
        for h in hits:
            print(f"  {h['rank']:3d}  {h['similarity']:.4f}  {h['cls']}  " + (h["path"] or f"train index {h['index']}"))
    line = f"index: {len(bank)} x {bank.shape[1]} features, {len(args.query)} queries, top {args.k}, {what}, {secs:.3f} s"
    recall = None
    if args.recall:
        exact_sims, exact_nn = retrieval.exact_search(q, bank, args.k)
        recall = retrieval.recall_at_k(nn, exact_nn, sims, exact_sims)
        line += f", recall@{args.k} {recall:.4f} against exact"
    print(line)
    if args.json:
        checkpoint.write_text_atomic(args.json, json.dumps(dict(index=args.index, network=args.pretrained[0], k=args.k,
                                                                backend=what, recall=recall, results=results),
                                                           indent=1) + "\n", "JSON results")
        print(f" * results -> '{args.json}'")
    return results


def run(args):
    check_args(args)
    args.device = du.resolve_device(args.device)
    torch.set_flush_denormal(True)
    return index_search(args) if args.index else page(args)


def main(argv=None):
    args = get_args(argv)
    return exit_on_error(run, args)


if __name__ == "__main__":
    main()
