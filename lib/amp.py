"""Mixed precision: `--amp off|bf16|fp16` as an autocast factory (None when off), and the one way
every forward enters it. The memory bank and the losses stay float32. `--amp auto` (training only,
the CPU recipes' fast path): bf16 on a CPU that computes bfloat16 natively, else off."""
import contextlib

import torch


def cpu_bf16():
    """The ISA extension this CPU computes bfloat16 with ('amx_bf16', 'avx512_bf16'), or None: where
    autocast to bfloat16 is faster than float32 (elsewhere it is emulated, and slower)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return next((k for k in ("amx_bf16", "avx512_bf16") if caps.get(k)), None)


def resolve(amp, device_type):
    """(the --amp value to run with, the line that says what auto chose; None unless auto)."""
    if amp != "auto":
        return amp, None
    isa = cpu_bf16() if device_type == "cpu" else None
    if isa:
        return "bf16", f"amp: --amp auto -> bf16 (this CPU has {isa}: the CPU fast path, docs/performance.md)"
    why = "no native bfloat16 on this CPU" if device_type == "cpu" else f"auto is the CPU's fast path; on {device_type} pass --amp bf16|fp16"
    return "off", f"amp: --amp auto -> off ({why})"


def warning(amp, device_type):
    """The line a value asked for gets where it is emulated on this CPU (slower than float32), or None."""
    if amp == "fp16" and device_type == "cpu":
        return ("warning: --amp fp16 on a CPU is emulated, measured 7-15x slower than float32 (docs/performance.md); "
                "--amp off, or --amp auto for bf16 where the CPU has it")
    if amp == "bf16" and device_type == "cpu" and not cpu_bf16():
        return ("warning: --amp bf16 on this CPU (no native bfloat16) is emulated, 8-12x slower than float32 "
                "(measured: docs/performance.md); --amp off, or --amp auto")
    return None


def setup(amp, device_type):
    """Every script's --amp: (the value resolve() gives, the one a run records and runs with; its
    autocast factory), with what auto chose and any warning printed."""
    value, note = resolve(amp, device_type)
    for line in (note, warning(value, device_type)):
        if line:
            print(line)
    return value, autocast_for(value, device_type)


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


if __name__ == "__main__":  # `python -m lib.amp auto`: the value auto picks on this machine's default device, and why
    import sys
    device = "cuda" if torch.cuda.is_available() else "cpu"
    value, note = resolve(sys.argv[1] if len(sys.argv) > 1 else "auto", device)
    print(value)
    print(note or f"amp: --amp {value}")
