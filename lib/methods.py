"""The training methods the engine runs through one interface:

    loss = method(model, images, index, autocast)   # forward on the view(s), float32 loss
    ...backward...
    method.update()                                 # after backward: the post-step bank update

`method.bank` is the memory bank (kNN monitor, checkpoint 'memory'); `model` stays the backbone
with its instance head `fc` (kNN and export use it alone). Parameters a method owns besides the
model (CLD's group head) are its `head_state()`, saved beside the model.

NPID: the paper, unchanged. NPIDCLD: NPID + Cross-Level Discrimination (Wang, Liu, Yu, CVPR 2021),
following the authors' code frank-xwang/CLD-UnsupervisedLearning (cited below as CLD:file).
InstanceClassifier: the parametric side, a learned weight vector per training image: the paper's
parametric-softmax baseline (its Eq. 1) and PIC (Cao et al., NeurIPS 2020, code bl0/PIC, cited as
PIC:file)."""
import argparse
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import dist as du
from .amp import autocast_or_nothing, to_float32
from .errors import UserError
from .LinearAverage import LinearAverage
from .NCEAverage import NCEAverage


def build_bank(args, n):
    if args.nce_k > 0:
        return NCEAverage(args.low_dim, n, args.nce_k, args.nce_t, args.nce_m, loss=args.nce_loss, prox=args.prox)
    return LinearAverage(args.low_dim, n, args.nce_t, args.nce_m, prox=args.prox)


def build_method(args, n, model):
    """The --method's module (METHODS, at the end of this file) for n training images."""
    if getattr(args, "warmup_epochs", 0) < 0:
        raise UserError(f"--warmup-epochs must be >= 0 (got {args.warmup_epochs})")
    method = getattr(args, "method", "cld" if getattr(args, "cld", False) else "npid")  # args of one's own: --cld
    return METHODS[method].build(args, n, model)


class TwoViews:
    """A train transform applied twice to the same image: C x H x W -> 2 x C x H x W. Inside the
    dataset's __getitem__, so both views come from the sample's own seeded RNG stream, one after
    the other (different draws). Under --gpu-aug the two copies are augmented apart on the device."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return torch.stack([self.transform(img), self.transform(img)])

    def __repr__(self):
        return f"TwoViews({self.transform!r})"


def average_grads(params):
    """A method's own parameters are outside DDP: average their gradients over the ranks here, after
    each backward (before the optimiser step; an accumulated sum stays exact). Identity in one process."""
    if du.get_world_size() > 1:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= du.get_world_size()


class NPID(nn.Module):
    """One view, the instance loss against the bank, then the bank update with its features."""
    SAMPLES_NEGATIVES = True  # --nce-k applies (an instance classifier scores every image instead)

    def __init__(self, bank, channels_last=False):
        super().__init__()
        self.bank, self.channels_last, self._step = bank, channels_last, None

    def prepare(self, images):
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward(self, model, images, index, autocast=None):
        with autocast_or_nothing(autocast):
            feature = model(self.prepare(images))  # B x D, L2-normalised, float32
        self._step = (feature.detach(), index)
        return self.bank.loss(feature.float(), index)

    def update(self):
        self.bank.update(*self._step)  # after backward: the gradient saw the bank before it
        self._step = None

    def head_state(self):
        return {}

    # each method owns its flags (declared in add_flags, defaulted and checked in finish) and its
    # construction; the paper's own flags (the bank's: --nce-k/t/m, ...) are lib/options.py's
    @classmethod
    def add_flags(cls, p):
        pass

    @classmethod
    def finish(cls, p, args, given):
        pass

    @classmethod
    def build(cls, args, n, model):
        return cls(build_bank(args, n), args.channels_last)


def kmeans(x, k, iters):
    """Batch k-means as CLD:spectral_clustering.py `KMeans` (lines 62-92; details in docs/methods.md):
    the first k rows as initial centroids, `iters` rounds of nearest centroid (squared Euclidean, ties
    to the lowest index) then means; an empty cluster's centroid is zero; gradients flow through the
    last means into x, not through the labels. Returns the labels (B) and the centroids (k x D)."""
    c = x[:k]
    for _ in range(iters):
        with torch.no_grad():
            labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)  # B x k squared distances -> B
        counts = torch.bincount(labels, minlength=k).clamp_(min=1).to(x.dtype)  # k
        c = x.new_zeros(k, x.shape[1]).index_add(0, labels, x) / counts[:, None]  # k x D
    return labels, c


def cld_loss(g1, g2, k, iters, t):
    """Cross-level loss, CLD:train_cifar_npid_cld.py train() (commit 9de5389), the lines
    `affnity1 = torch.mm(features_batchDis1, centroids2.t())`, `criterion_cld(affnity1.div_(args.cld_t),
    cluster_label2)`, the same for view 2 against view 1, and `CLD_loss = (... + ...)/2`: each view's
    group features against the OTHER view's centroids at temperature t, the other view's labels as
    targets, cross-entropy, the two directions averaged. (Temperature: their script's --cld_t 0.2.)"""
    labels1, c1 = kmeans(g1, k, iters)
    labels2, c2 = kmeans(g2, k, iters)
    l12 = F.cross_entropy(g1 @ c2.t() / t, labels2)  # B x k: view 1 against view 2's groups
    l21 = F.cross_entropy(g2 @ c1.t() / t, labels1)
    return (l12 + l21) / 2


class NPIDCLD(NPID):
    """NPID + CLD on two views per image (images: B x 2 x C x H x W).

    Instance branch (CLD:train_cifar_npid_cld.py train(): `outputs1 = lemniscate(features_insDis1,
    indexes)`, the same for view 2, `insDis_loss = (insDis_loss + loss_nce_2)/2`): each view against
    the bank with the bank's loss (their recipe: full softmax, --nce-k 0), the two averaged.
    Group branch: a second head on the pooled backbone feature, Linear -> low_dim then L2
    (CLD:models/resnet_cifar.py `self.groupDis = nn.Sequential(nn.Linear(512*block.expansion,
    low_dim), Normalize(2))`, fed `out_`, the pooled feature), batch k-means per view (`KMeans(
    features_batchDis1, K=args.clusters, Niters=args.num_iters)`; per process under torchrun: each rank
    clusters its local batch, as their DistributedDataParallel script), and `cld_loss`.
    Total = instance + lambda * CLD (`loss = insDis_loss + args.Lambda*CLD_loss`).

    Bank order: both views' gradients see the bank before the step (the paper's rule); after
    backward the bank is updated with view 2's features, then view 1's. That is the order their
    code's in-backward updates run: autograd executes the later-created node (view 2) first."""

    def __init__(self, bank, model, low_dim, clusters, iters, t, lam, channels_last=False):
        super().__init__(bank, channels_last)
        fc = model.fc
        in_dim = (fc[0] if isinstance(fc, nn.Sequential) else fc).in_features
        self.group = nn.Linear(in_dim, low_dim)
        self.clusters, self.iters, self.t, self.lam = clusters, iters, t, lam
        self._pooled = None
        # the instance head's input is the pooled backbone feature: capture it for the group head
        fc.register_forward_pre_hook(lambda m, inp: setattr(self, "_pooled", inp[0]))

    def group_features(self, pooled):
        return F.normalize(to_float32(self.group(pooled)), dim=1)

    def forward(self, model, images, index, autocast=None):
        if images.dim() != 5 or images.shape[1] != 2:
            raise UserError(f"--cld needs two views per image (B x 2 x C x H x W), got {tuple(images.shape)}")
        feats, groups = [], []
        for v in (images[:, 0], images[:, 1]):  # one forward per view: BN statistics per view, as theirs
            with autocast_or_nothing(autocast):
                feats.append(model(self.prepare(v)))  # B x D instance features
                groups.append(self.group_features(self._pooled))  # B x D group features
        instance = (self.bank.loss(to_float32(feats[0]), index) + self.bank.loss(to_float32(feats[1]), index)) / 2
        self._step = ([f.detach() for f in feats], index)
        return instance + self.lam * cld_loss(groups[0], groups[1], self.clusters, self.iters, self.t)

    def update(self):
        (f1, f2), index = self._step
        self.bank.update(f2, index)  # view 2 first, then view 1 (see the class comment)
        self.bank.update(f1, index)
        self._step = None
        average_grads(self.group.parameters())  # the group head is outside DDP

    def head_state(self):
        return self.group.state_dict()

    def load_head_state(self, sd):
        self.group.load_state_dict(sd)

    @classmethod
    def add_flags(cls, p):
        g = p.add_argument_group("NPID+CLD (Wang, Liu, Yu, CVPR 2021; off by default)")
        g.add_argument("--cld", action="store_true", help="add Cross-Level Discrimination: two views, a group head, "
                       "batch k-means, the cross-level loss (lib/methods.py)")
        g.add_argument("--cld-clusters", default=None, type=int,
                       help="k-means clusters per batch (default: theirs, 200 for CIFAR-100, else 128 as for CIFAR-10)")
        g.add_argument("--cld-iters", default=5, type=int, help="k-means iterations")
        g.add_argument("--cld-t", default=0.2, type=float, help="temperature of the cross-level loss")
        g.add_argument("--cld-lambda", default=1.0, type=float, help="weight of the cross-level loss")

    @classmethod
    def finish(cls, p, args, given):
        # CLD's clusters per batch (train_cifar*_npid_cld.sh: --clusters 128 / 200). A run without --cld
        # keeps 128, the value every checkpoint before this default was saved with.
        args.parser_defaults["cld_clusters"] = 128
        if args.cld_clusters is None:
            args.cld_clusters = 200 if args.cld and getattr(args, "dataset", None) == "cifar100" else 128

    @classmethod
    def build(cls, args, n, model):
        if args.cld_clusters < 1 or args.cld_iters < 1 or args.cld_t <= 0 or args.cld_lambda < 0:
            raise UserError("--cld-clusters and --cld-iters must be >= 1, --cld-t > 0 and --cld-lambda >= 0")
        return cls(build_bank(args, n), model, args.low_dim, args.cld_clusters, args.cld_iters, args.cld_t,
                   args.cld_lambda, args.channels_last)


def instance_logits(feature, weight, t, cosine):
    """B x N scores of the features against one weight vector per training image, divided by t:
    Eq. 1 of the paper (w_i^T v) with `cosine` off and t = 1; PIC's cosine classifier with it on
    (PIC:contrast/models/PIC.py forward: `F.normalize(self.sim_matrix, dim=1)`, the einsum of the
    normalised features with it, `/ self.contrast_temperature`)."""
    w = F.normalize(weight, dim=1) if cosine else weight
    return feature @ w.t() / t


class InstanceClassifier(NPID):
    """Instance classification with a learned N x D weight table `weight`, trained by the optimizer
    with the network (its weight decay and momentum: PIC:main_pretrain.py build_model hands
    `model.parameters()`, the table included, to one SGD): loss = CE(instance_logits(f, W), index).

    The feature f: the network's L2-normalised 128-d output (PIC; the one kNN and every evaluation
    use), or, given `model`, its head `fc`'s output before the norm (Eq. 1's v = f(x): the paper
    normalises only from its Eq. 2 on), captured by a forward hook.
    Initialisation: PIC's `nn.init.normal_(self.sim_matrix, 0, 0.01)` with `init_std`, else that of a
    bias-free nn.Linear(D, N) (uniform in +-1/sqrt(D)), the classifier layer Eq. 1 describes.
    `bank` is a memory bank of the features (momentum --nce-m, the NPID update) for the kNN monitor
    and the checkpoint's 'memory' only: the loss never reads it. PIC's multi-crop (small crops
    against the detached table) is not implemented; their paper's negative sampling and
    weight-update correction are not in their released code."""

    def __init__(self, bank, n, dim, t, cosine, init_std=None, channels_last=False, model=None):
        super().__init__(bank, channels_last)
        self.t, self.cosine, self._raw = t, cosine, None
        self.unnormalised = model is not None
        if model is not None:  # the head's output, before the model's L2 norm
            model.fc.register_forward_hook(lambda m, inp, out: setattr(self, "_raw", out))
        self.weight = nn.Parameter(torch.empty(n, dim))  # N x D
        if init_std is None:
            nn.init.uniform_(self.weight, -1 / dim ** 0.5, 1 / dim ** 0.5)
        else:
            nn.init.normal_(self.weight, 0, init_std)
        du.broadcast_model(self)  # every rank starts from rank 0's table

    def forward(self, model, images, index, autocast=None):
        with autocast_or_nothing(autocast):
            feature = model(self.prepare(images))  # B x D, L2-normalised
        feature = to_float32(feature)
        self._step = (feature.detach(), index)  # the bank takes the normalised feature
        v = to_float32(self._raw) if self.unnormalised else feature
        self._raw = None
        return F.cross_entropy(instance_logits(v, self.weight, self.t, self.cosine), index)  # B x N

    def update(self):
        super().update()  # the monitor's bank
        average_grads([self.weight])

    def head_state(self):
        return {"weight": self.weight.detach()}

    def load_head_state(self, sd):
        if set(sd) != {"weight"} or tuple(sd["weight"].shape) != tuple(self.weight.shape):
            got = {k: tuple(v.shape) for k, v in sd.items()} if isinstance(sd, dict) else type(sd).__name__
            raise UserError(f"the checkpoint's instance weights {got} do not fit this run's {tuple(self.weight.shape)}")
        with torch.no_grad():
            self.weight.copy_(sd["weight"])

    # what each parametric method defaults to where its flag is not given (--inst-t, --inst-cosine,
    # --inst-feature-norm), and its table's init: Eq. 1 has no temperature and no normalisation (the
    # paper brings in both with its Eq. 2); PIC normalises features and weights at T 0.2
    # (contrast/models/PIC.py, scripts/PIC.sh) and draws the table from N(0, 0.01)
    DEFAULTS, INIT_STD, SAMPLES_NEGATIVES = None, None, False
    INSTANCE_FLAGS = ("inst_t", "inst_cosine", "inst_feature_norm")

    @classmethod
    def add_flags(cls, p):
        g = p.add_argument_group("parametric / pic: the instance classifier (lib/methods.py)")
        g.add_argument("--inst-t", default=None, type=float,
                       help="parametric / pic: temperature of the instance classifier (default: 1 for parametric, "
                            "Eq. 1 has none; 0.2 for pic, PIC's scripts/PIC.sh)")
        g.add_argument("--inst-cosine", default=None, action=argparse.BooleanOptionalAction,
                       help="parametric / pic: L2-normalise the weight vectors too (default: off for parametric, on for pic)")
        g.add_argument("--inst-feature-norm", default=None, action=argparse.BooleanOptionalAction,
                       help="parametric / pic: score the L2-normalised feature (default: on for pic; off for parametric, "
                            "Eq. 1 scores the head's output v = f(x); kNN and evaluation use the normalised one either way)")

    @classmethod
    def finish(cls, p, args, given):
        if cls is InstanceClassifier:  # the flags' owner: refused with a method that has none
            if not issubclass(METHODS[args.method], InstanceClassifier) and given & set(cls.INSTANCE_FLAGS):
                p.error("--inst-t, --inst-cosine and --inst-feature-norm go with --method parametric or pic")
            return
        if args.method != cls.NAME:
            return
        bank_flags = [f for f in ("nce_k", "nce_loss", "prox") if f in given]
        if bank_flags:
            p.error(f"--method {args.method} classifies against one weight per image, no sampled negatives: "
                    + "/".join("--" + f.replace("_", "-") for f in bank_flags) + ": NPID's flags, drop them")
        for k, v in zip(cls.INSTANCE_FLAGS, cls.DEFAULTS):
            if getattr(args, k) is None:
                setattr(args, k, v)
        if not math.isfinite(args.inst_t) or args.inst_t <= 0:
            p.error(f"--inst-t must be > 0 (got {args.inst_t})")

    @classmethod
    def build(cls, args, n, model):  # the bank is the kNN monitor's only: features, never in the loss
        bank = LinearAverage(args.low_dim, n, args.nce_t, args.nce_m)
        return cls(bank, n, args.low_dim, args.inst_t, args.inst_cosine, init_std=cls.INIT_STD,
                   channels_last=args.channels_last, model=None if args.inst_feature_norm else model)


class Parametric(InstanceClassifier):
    """The paper's parametric-softmax baseline (its Eq. 1)."""
    NAME, DEFAULTS = "parametric", (1.0, False, False)


class PIC(InstanceClassifier):
    """Parametric Instance Classification (Cao et al., NeurIPS 2020)."""
    NAME, DEFAULTS, INIT_STD = "pic", (0.2, True, True), 0.01


# every method, by its --method name: a new method is its class above, registered here, and its test
METHODS = {"npid": NPID, "cld": NPIDCLD, "parametric": Parametric, "pic": PIC}


def _owners(name):
    """The classes that define `name` themselves, over every method's ancestry, each once."""
    return list(dict.fromkeys(c for m in METHODS.values() for c in reversed(m.__mro__) if name in vars(c)))


def add_flags(p):
    """Every method's own flags (lib/options.parser)."""
    for c in _owners("add_flags"):
        c.add_flags(p)


def finish(p, args, given):
    """Every method's defaults and checks of its flags (lib/options.parse); `given`: the flags typed."""
    for c in dict.fromkeys([*_owners("finish"), *METHODS.values()]):
        c.finish(p, args, given)
