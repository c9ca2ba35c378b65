"""The supervised reference (an upper bound) of the Fashion-MNIST table: the network, data,
augmentation, optimiser and schedule of cifar.py, trained with the labels (cross-entropy of a
linear classifier on the 128-d embedding) instead of instance discrimination. Same flags as cifar.py
(the NPID ones are unused; --nce-t scales the logits of the unit-norm embedding as NPID scales its
similarities). `--epochs 0` writes the untrained network (the same init as cifar.py's, same seed).
  python supervised.py --dataset fashion-mnist --train-subset 10000 --arch ResNet10 --width 16 --cos --epochs 40"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import cifar
from lib import data, engine, knn, runs
from lib import fit as trainer
from lib import dist as du
from lib.errors import UserError, exit_on_error

# cifar.py flags this script does not implement: set, they would be silently ignored (or crash)
UNSUPPORTED = ("cld", "evaluate", "resume", "start_epoch", "amp", "compile", "iter_size", "sync_bn", "baselines",
               "export_features", "export_embedding", "force", "world_size", "method", "window_size", "eval_every")


@torch.no_grad()
def accuracy(model, head, loader, device, t):
    model.eval()
    hits = sum(knn.topk_hits(head(model(x.to(device))) / t, y.to(device))[0] for x, y, _ in loader)
    model.train()
    return 100.0 * hits / len(loader.dataset)


def check_args(args):
    given = [k for k in UNSUPPORTED if getattr(args, k) != args.parser_defaults.get(k)]
    if given:
        flag = lambda k: "--test-only" if k == "evaluate" else "--" + k.replace("_", "-")
        raise UserError(f"supervised.py does not implement {', '.join(map(flag, given))} "
                        "(it trains the network with the labels, one process, from scratch)")
    if args.epochs < 0 or args.batch_size < 1:
        raise UserError("--epochs must be >= 0 and -b >= 1")


def train(args):
    check_args(args)
    args.device = du.resolve_device(args.device)
    args.world_size, args.rank = 1, 0
    device = torch.device(args.device)
    task = cifar.task(args)
    torch.manual_seed(args.seed)  # as engine.run: the backbone gets cifar.py's initial weights
    model = task.build_model(args.arch, args.low_dim).to(device)
    head = nn.Linear(args.low_dim, task.num_classes).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay)
    train_loader, _, val_loader = data.make_loaders(task, args)
    path = os.path.join(args.checkpoint_dir, "checkpoint.pth")
    run_id = runs.identity(args, supervised=True)
    run = runs.Run(args.checkpoint_dir, "supervised.py", args, files=("checkpoint.pth",)).check_owner()
    # this repo's checkpoint layout, without a memory bank (features.load_backbone reads it), resumable
    ck = runs.read_continued(args, path, run_id, "supervised checkpoint", {"state_dict": dict, "head": dict,
                             "optimizer": dict, "rng": list, "epoch": int}, "supervised", "supervised.py")
    run.start(device, fresh=args.no_auto_resume)  # a new run in the folder: the old run's files, log and scalars go

    def epoch_fn(epoch):
        total, n = 0.0, 0
        train_loader.sampler.set_epoch(epoch)
        engine.set_lr(opt, task.lr_at(epoch, args))
        for images, targets, _ in train_loader:
            images, targets = images.to(device), targets.to(device)
            if task.gpu_augment is not None:
                images = task.gpu_augment(images)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(head(model(images)) / args.nce_t, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(targets), n + len(targets)
        return f"loss {total / n:.4f}", {"train_loss": total / n}, {"loss": total / n}, None

    objects = {"state_dict": model, "head": head, "optimizer": opt, "rng": runs.RNG()}
    extra = {"arch": args.arch, "supervised": True}
    trainer.fit(args, run, path, run_id, "train", objects, epoch_fn, ck, extra)
    if args.epochs == 0:  # the untrained network, saved all the same
        trainer.save(path, run_id, 0, objects, None, extra)
    print(f"supervised: checkpoint '{path}'")
    acc = accuracy(model, head, val_loader, device, args.nce_t)
    run.results({"test": {"top1": acc}, "test_images": len(val_loader.dataset)})
    print(f"supervised: top1={acc:.2f} (the classifier on {len(val_loader.dataset)} test images)")
    run.close()


def main(argv=None):
    args = cifar.get_args(argv)
    if args.checkpoint_dir == f"checkpoints/{args.dataset}":  # cifar.py's default: keep NPID's runs apart
        args.checkpoint_dir = f"checkpoints/supervised_{args.dataset}"
    exit_on_error(train, args)


if __name__ == "__main__":
    main()
