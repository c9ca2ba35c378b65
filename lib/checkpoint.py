"""Checkpoints: plain data written atomically, read back with validation; the authors' legacy
pickles read through an unpickler that can only build tensors and inert stand-ins."""
import collections
import hashlib
import os
import pickle
import shutil
import tempfile

import torch

from .errors import UserError, brief


def write_atomic(path, write, what):
    """write(f) into a temp file in the same folder, fsync, rename over `path`, fsync the folder: a
    reader sees the old file or the new one, never a half-written one. An OSError (disk full,
    read-only, ...) removes the temp file and is one UserError line naming `path`."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".pth")
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(d)
    except (OSError, RuntimeError) as e:
        os_err = _os_error(e)  # torch's zip writer turns a failed write into a RuntimeError raised after it
        if os_err is None:
            raise
        kept = "the previous one is unchanged" if os.path.exists(path) else "nothing was written"
        raise UserError(f"cannot write the {what} '{path}': {os_err.strerror or os_err}; {kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(e):
    """The OSError behind e (e itself, or what it was raised from or while handling), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not supported by every file system
        pass
    finally:
        os.close(fd)


def save_atomic(obj, path):
    """torch.save to a temp file in the same folder, fsync, then rename: never a half-written file."""
    write_atomic(path, lambda f: torch.save(obj, f), "checkpoint")


def write_text_atomic(path, text, what="file"):
    """A text file written as durably as save_atomic; left untouched when it already holds `text`."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            if f.read() == text:
                return
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), what)


def copy_atomic(src, dst):
    """A copy as durable as save_atomic (temp file, fsync, rename)."""
    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)
    write_atomic(dst, write, "copy of the checkpoint")


def sha256(path):
    """The file's sha256 (hex): the identity of the network a result was computed with; None for no file."""
    if not path:
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_writable_dir(path, flag):
    """Create `path` and probe it with a temp file: an output folder that cannot be created or
    written is found at the start of a run, as one UserError line. Returns `path`."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        where = f" ('{e.filename}')" if e.filename and os.path.abspath(e.filename) != os.path.abspath(path) else ""
        raise UserError(f"{flag} '{path}' cannot be created or written: {e.strerror or e}{where}") from None
    return path


# --- the authors' files ---------------------------------------------------------------------

class _Inert:
    """Stand-in for a pickled object of an allowed legacy class: it only keeps its state."""

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class LegacyNCEAverage(_Inert):
    pass


class LegacyLinearAverage(_Inert):
    pass


class LegacyAliasMethod(_Inert):
    pass


def _thnn_backend():  # torch 0.4 pickled every module's `_backend` as a call to this
    return None


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("lib.NCEAverage", "NCEAverage"): LegacyNCEAverage,
    ("lib.LinearAverage", "LinearAverage"): LegacyLinearAverage,
    ("lib.alias_multinomial", "AliasMethod"): LegacyAliasMethod,
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _thnn_backend,
}
for _dt in ("Float", "Double", "Half", "Long", "Int", "Short", "Char", "Byte", "Bool"):
    _ALLOWED[("torch", _dt + "Storage")] = getattr(torch, _dt + "Storage")
_ALLOWED[("torch", "UntypedStorage")] = torch.UntypedStorage


class ForbiddenPickle(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in _ALLOWED; anything else (os.system, builtins.eval, ...) is
    refused before it can be called."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenPickle(f"{module}.{name}") from None


class restricted_pickle:  # the `pickle_module` interface torch.load expects
    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "restricted_pickle"

    @staticmethod
    def load(f, **kw):
        return RestrictedUnpickler(f, **kw).load()


def _legacy_bank(obj):
    """The pickled torch-0.4 NCEAverage / LinearAverage -> our {'type', 'memory', 'params'}."""
    if not isinstance(obj, (LegacyNCEAverage, LegacyLinearAverage)):
        raise UserError("legacy checkpoint: 'lemniscate' is not an NCEAverage or LinearAverage")
    buffers = obj.state.get("_buffers", {})
    if "memory" not in buffers or "params" not in buffers:
        raise UserError("legacy checkpoint: the memory bank has no 'memory'/'params' buffers")
    kind = "NCEAverage" if isinstance(obj, LegacyNCEAverage) else "LinearAverage"
    return {"type": kind, "memory": buffers["memory"].float(), "params": buffers["params"].float()}


def convert_legacy(ck):
    """The authors' checkpoint dict -> this repo's layout (keys without `module.`; BN counters are
    filled in when the state dict is loaded)."""
    out = {k: v for k, v in ck.items() if k not in ("lemniscate", "state_dict")}
    out["state_dict"] = {k[len("module."):] if k.startswith("module.") else k: v
                         for k, v in ck["state_dict"].items()}
    if "lemniscate" in ck:
        out["memory"] = _legacy_bank(ck["lemniscate"])
    out["legacy"] = True
    return out


def _check_file(path, what, prefix=""):
    if not os.path.isfile(path):
        raise UserError(f"{prefix}no {what if what.endswith('file') else what + ' file'} at '{path}'")
    if os.path.getsize(path) == 0:
        raise UserError(f"{prefix}'{path}' is empty (0 bytes): not a {what}; it was cut off while being written "
                        "or copied, use another copy")


def read(path, what="checkpoint"):
    """The one reader of the files this repo writes (heads, feature caches, exports): torch.load
    with weights_only=True; a missing, empty, truncated or foreign file is one UserError line."""
    _check_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"'{path}' is not a readable {what} ({brief(e)}): truncated or not written by this repo; "
                        "delete it or use another copy") from None


def saved_args(path):
    """The settings a checkpoint of this repo records (its 'args'), read without loading its tensors
    (memory-mapped); None for anything else (no file, the authors' pickles, a foreign file: the full
    load that follows says what is wrong)."""
    try:
        args = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("args")
    except Exception:
        return None
    return args if isinstance(args, dict) else None


def load_object(path, prefix="--resume: "):
    """What a checkpoint file holds: plain data (weights_only=True), else the authors' torch-0.4
    pickle through the restricted unpickler. Any problem is one UserError line."""
    _check_file(path, "checkpoint", prefix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as e:
        plain_err = e
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle), True
    except ForbiddenPickle as f:
        raise UserError(f"{prefix}'{path}' refers to '{f}', which is not allowed in a checkpoint; "
                        "nothing from it was run") from None
    except Exception as e:  # torch's "Weights only load failed ..." advice is not for this case: say what failed
        shown = e if str(plain_err).startswith("Weights only load failed") else plain_err
        raise UserError(f"{prefix}'{path}' is not a readable checkpoint ({brief(shown)}): truncated, "
                        "corrupt or not a PyTorch file") from None


def as_npid(obj, path, legacy=False, prefix="--resume: "):
    """A loaded object -> this repo's checkpoint dict, after checking what the code reads of it
    (a foreign file with a list where a dict belongs is one line, not an AttributeError later)."""
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise UserError(f"{prefix}'{path}' is not an NPID checkpoint (no 'state_dict')")
    sd = obj["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise UserError(f"{prefix}'{path}': its 'state_dict' is a {type(sd).__name__} that is not a dict of "
                        "named tensors (not an NPID checkpoint)")
    for key, kind in (("args", dict), ("arch", str), ("epoch", int), ("optimizer", dict), ("memory", dict),
                      ("rng", list), ("best_knn", (int, float)), ("scaler", dict), ("method_head", dict), ("images", list)):
        if obj.get(key) is not None and (not isinstance(obj[key], kind) or isinstance(obj[key], bool)):
            name = kind.__name__ if isinstance(kind, type) else "number"
            raise UserError(f"{prefix}'{path}': its '{key}' is a {type(obj[key]).__name__}, not the {name} "
                            "this repo saves (not an NPID checkpoint of this repo)")
    if isinstance(obj.get("epoch"), int) and obj["epoch"] < 0:
        raise UserError(f"{prefix}'{path}': its 'epoch' is {obj['epoch']} (not an NPID checkpoint of this repo)")
    if legacy or any(k.startswith("module.") for k in sd):  # the authors' layout (pickled, or zip-saved)
        return convert_legacy(obj)
    return obj


def misfit(own, sd, may_miss=()):
    """Why state dict `sd` does not fit a model whose state dict is `own` (None if it fits): a shape,
    a missing or an unexpected tensor. BatchNorm counters (absent from the authors' files) and keys
    with a prefix in `may_miss` may be missing. The one fit check of resume and load_backbone."""
    bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")
               and not any(k.startswith(p) for p in may_miss)]
    unexpected = [k for k in sd if k not in own]
    if bad:
        return f"shape of {bad[0]} is {tuple(sd[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}"
    if missing:
        return f"missing {missing[0]}"
    return f"unexpected {unexpected[0]}" if unexpected else None


def load(path, prefix="--resume: "):
    """Read a checkpoint of this repo or of the authors; any problem is one UserError line."""
    obj, legacy = load_object(path, prefix)
    return as_npid(obj, path, legacy, prefix)
