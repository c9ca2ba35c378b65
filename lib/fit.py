"""The one resumable training loop of the evaluation scripts (linear.py's heads, finetune.py's
networks, supervised.py): each epoch is printed with its ETA, logged in log.txt, checkpointed
atomically, then written to TensorBoard, in this order, so that a run cut anywhere resumes exactly
and logs each epoch once; Ctrl-C says how to continue. What an epoch does is the caller's `epoch_fn`."""
import time

from lib import checkpoint, errors, runs
from lib import dist as du


def fit(args, run, path, run_id, tag, objects, epoch_fn, ck=None, extra=None, what="network"):
    """Train for args.epochs, continuing the checkpoint `ck` read from `path` (None: start afresh).
    objects: {checkpoint key: object with state_dict/load_state_dict} (the model, its optimizer...).
    epoch_fn(epoch) -> (printed text, {log fields}, {TensorBoard scalars}, result): the result (plain
    data, or None before the last epoch) is saved and returned. Returns the last result. `what`
    names the objects in an error line (the network, a head)."""
    start, result = 0, None
    if ck is not None:
        runs.restart_from_checkpoint(path, ck, what, **objects)
        start, result = ck["epoch"], ck.get("result")
        print(f"=> [{tag}] resumed from '{path}' at epoch {start}" + (" (finished)" if start == args.epochs else ""))
    run.keep_log(lambda d: d.get("tag") != tag or d.get("epoch", 0) < start)  # each epoch logged once
    progress = runs.Progress(args.epochs, start)
    errors.on_interrupt(runs.resume_hint(args, start, path, True, f"[{tag}]"))
    for epoch in range(start, args.epochs):
        t0 = time.time()
        text, stats, scalars, result = epoch_fn(epoch)
        seconds = round(time.time() - t0, 1)
        print(f" * [{tag}] epoch {epoch} {text} ({seconds} s; {progress.step()})", flush=True)
        if du.is_main_process():  # the log first: cut before the checkpoint, the resume drops this line
            run.log({"tag": tag, "epoch": epoch, **stats, "seconds": seconds}, None)
            save(path, run_id, epoch + 1, objects, result, extra)
            errors.on_interrupt(runs.resume_hint(args, epoch + 1, path, True, f"[{tag}]"))  # saved: say so at once
            for name, value in scalars.items():
                run.writer.add_scalar(f"{tag}/{name}", value, epoch)
            run.writer.flush()
    errors.on_interrupt(None)
    return result


def save(path, run_id, epoch, objects, result=None, extra=None):
    """The checkpoint fit writes: the run identity, the epochs done, each object's state, the result."""
    checkpoint.save_atomic({"args": run_id, "epoch": epoch, **{k: o.state_dict() for k, o in objects.items()},
                            "result": result, **(extra or {})}, path)


def choose(held):
    """The setting of the best held-out score ({setting: score}); ties: the first in grid order."""
    return max(held, key=held.get)
