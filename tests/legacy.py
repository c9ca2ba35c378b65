"""Writes checkpoints in the authors' format: torch's legacy (pre-1.6) serialization, `module.`
keys, BatchNorm without num_batches_tracked, and 'lemniscate' a pickled torch-0.4 module of class
lib.NCEAverage.NCEAverage (or LinearAverage) whose state holds `_backend` (pickled as a call to
torch.nn.backends.thnn._get_thnn_function_backend), the buffers memory/params and an AliasMethod."""
import collections
import sys
import types

import torch
from torch.nn.backends.thnn import _get_thnn_function_backend


class _Backend:
    def __reduce__(self):
        return (_get_thnn_function_backend, ())


def _stub(module, name):
    cls = type(name, (), {})
    cls.__module__, cls.__qualname__ = module, name
    return cls


def write_legacy_checkpoint(path, model, memory, params, kind="NCEAverage", epoch=200, arch="resnet18"):
    sd = collections.OrderedDict(("module." + k, v.clone()) for k, v in model.state_dict().items()
                                 if not k.endswith("num_batches_tracked"))
    classes = {"lib.NCEAverage": _stub("lib.NCEAverage", "NCEAverage"),
               "lib.LinearAverage": _stub("lib.LinearAverage", "LinearAverage"),
               "lib.alias_multinomial": _stub("lib.alias_multinomial", "AliasMethod")}
    saved = {m: sys.modules.get(m) for m in classes}
    try:
        for m, cls in classes.items():
            mod = types.ModuleType(m)
            setattr(mod, cls.__name__, cls)
            sys.modules[m] = mod
        alias = classes["lib.alias_multinomial"]()
        alias.__dict__.update(prob=torch.ones(memory.shape[0]), alias=torch.zeros(memory.shape[0], dtype=torch.long))
        lem = classes["lib." + kind]()
        lem.__dict__.update(_backend=_Backend(), _parameters=collections.OrderedDict(),
                            _buffers=collections.OrderedDict(params=params, memory=memory),
                            _backward_hooks=collections.OrderedDict(), _forward_hooks=collections.OrderedDict(),
                            _forward_pre_hooks=collections.OrderedDict(), _modules=collections.OrderedDict(),
                            training=True, nLem=memory.shape[0], unigrams=torch.ones(memory.shape[0]),
                            multinomial=alias, K=int(params[0]) if kind == "NCEAverage" else 0)
        state = {"epoch": epoch, "arch": arch, "state_dict": sd, "lemniscate": lem, "best_prec1": 0.4,
                 "optimizer": {"state": {}, "param_groups": [{"lr": 0.0003, "momentum": 0.9, "params": [1, 2]}]}}
        torch.save(state, path, _use_new_zipfile_serialization=False)
    finally:
        for m, old in saved.items():
            if old is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = old


class Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        import os
        return (os.system, (self.cmd,))
