"""Checkpoints: plain data written atomically, read back with validation; the authors' legacy
pickles read through an unpickler that can only build tensors and inert stand-ins."""
import collections
import os
import pickle
import shutil
import tempfile
import zipfile

import torch

from .errors import UserError


def save_atomic(obj, path):
    """torch.save to a temp file in the same folder, fsync, then rename: never a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def copy_atomic(src, dst):
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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


def load(path):
    """Read a checkpoint of this repo or of the authors; any problem is one UserError line."""
    if not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint file at '{path}'")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        plain_err = e
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
        except ForbiddenPickle as f:
            raise UserError(f"--resume: '{path}' refers to '{f}', which is not allowed in a checkpoint; "
                            "nothing from it was run") from None
        except Exception:
            if zipfile.is_zipfile(path) or isinstance(plain_err, (pickle.UnpicklingError, EOFError, RuntimeError)):
                raise UserError(f"--resume: '{path}' is not a readable checkpoint "
                                f"({type(plain_err).__name__}: {str(plain_err).splitlines()[0][:120]})") from None
            raise UserError(f"--resume: '{path}' is not a readable checkpoint") from None
        if not isinstance(ck, dict) or "state_dict" not in ck:
            raise UserError(f"--resume: '{path}' is not an NPID checkpoint (no 'state_dict')")
        return convert_legacy(ck)
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise UserError(f"--resume: '{path}' is not an NPID checkpoint (no 'state_dict')")
    if any(k.startswith("module.") for k in ck["state_dict"]):  # the authors' layout, zip-saved
        return convert_legacy(ck)
    return ck
