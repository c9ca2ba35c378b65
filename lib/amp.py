"""Mixed precision: `--amp off|bf16|fp16` as an autocast factory (None when off), and the one way
every forward enters it. The memory bank and the losses stay float32."""
import contextlib

import torch


def autocast_for(amp, device_type):
    """A zero-argument factory of torch.autocast for --amp, or None for 'off'."""
    if amp == "off":
        return None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type, dtype=dtype)


def autocast_or_nothing(autocast):
    return autocast() if autocast else contextlib.nullcontext()


def to_float32(x):
    """Autocast's half precision up to float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
