"""One process or many: torchrun's environment, or the original's --world-size/--dist-url flags."""
import builtins
import datetime
import os

import torch
import torch.distributed as dist


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def resolve_device(name):
    """--device as a checked string: the default (cuda when present, else cpu), or the given one if it
    exists here; 'foo', 'cuda' without a GPU or 'cuda:3' on a 2-GPU machine are one UserError line."""
    from .errors import UserError
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device '{name}' is not a device (cpu, cuda or cuda:N)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device here (torch.cuda.is_available() is False); use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif d.type != "cpu":
        raise UserError(f"--device '{name}': only cpu and cuda are supported")
    return name


def init_distributed_mode(args):
    """Sets args.rank, args.world_size and args.device (a started group: is_dist()).

    torchrun exports RANK / WORLD_SIZE / LOCAL_RANK; without them, the original's
    `--world-size N --rank R --dist-url URL` starts the group by hand; else one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        args.rank, args.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        init = "env://"
    elif args.world_size > 1:
        local_rank, init = args.rank % max(1, torch.cuda.device_count()), args.dist_url
    else:
        args.rank, args.world_size = 0, 1
        args.device = resolve_device(args.device)
        return
    use_cuda = resolve_device(args.device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    else:
        args.device = "cpu"
    # on GPUs NCCL for the device's tensors and gloo for the CPU's: the banks and the instance table
    # are built (and broadcast from rank 0) on the CPU before they move, which NCCL alone refuses
    backend = args.dist_backend or ("cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    timeout = datetime.timedelta(minutes=30)
    if "TORCHELASTIC_RESTART_COUNT" in os.environ:
        # torchrun: after a restart, the rendezvous keys of the dead round are still in torchrun's
        # store and send the new workers to dead peers (pytorch/pytorch#167288); a key space of
        # their own per round avoids that
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), args.world_size,
                              is_master=not agent and args.rank == 0, timeout=timeout)
        store = dist.PrefixStore(f"npid/round{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)
        dist.init_process_group(backend, store=store, world_size=args.world_size, rank=args.rank, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=init, world_size=args.world_size, rank=args.rank, timeout=timeout)
    dist.barrier()
    _print_only_on_master(args.rank == 0)


def _print_only_on_master(is_master):
    orig = builtins.print

    def print(*a, force=False, **kw):
        if is_master or force:
            orig(*a, **kw)

    builtins.print = print


def all_gather_object(obj):
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_model(model):
    """Every rank takes rank 0's parameters and buffers (BatchNorm statistics included)."""
    if is_dist():
        for t in model.state_dict().values():
            torch.distributed.broadcast(t, 0)


def cleanup(barrier=False):
    """barrier=True on a normal exit: every rank is done before any tears the group down."""
    if is_dist():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
