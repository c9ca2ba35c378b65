"""The one-line error form: a problem with the user's input or environment is printed as
`error: ...` on stderr with exit status 2, never a traceback (engine.run does this)."""
import re
import sys
import zlib


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


# I/O faults (a full or read-only disk, a missing permission, a truncated or corrupt file) reaching
# engine.run from anywhere are turned into the same one line. Code that knows which file and what
# to do about it (datasets, checkpoints) raises a UserError saying so instead.
IO_ERRORS = (OSError, EOFError, zlib.error)


_interrupt_note = [None]


def on_interrupt(note):
    """The line Ctrl-C prints from now on (where the run resumes; None: none)."""
    _interrupt_note[0] = note


def exit_on_error(fn, *args, cleanup=None):
    """fn(*args) for an entry script: a UserError or an I/O fault is one `error:` line on stderr and
    exit status 2 (after cleanup(), e.g. leaving the process group), Ctrl-C is exit status 130 with
    the line on_interrupt set."""
    try:
        return fn(*args)
    except (UserError, *IO_ERRORS) as e:
        sys.stderr.write(f"error: {one_line(e)}\n")  # not print: under torchrun print is muted on ranks > 0
        if cleanup:
            cleanup()
        sys.exit(2)
    except KeyboardInterrupt:
        if _interrupt_note[0]:
            sys.stderr.write(_interrupt_note[0] + "\n")
        if cleanup:
            cleanup()
        sys.exit(130)


def brief(e):
    """An exception as a short phrase: its type and the first line of its message (which may be empty)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:120]}" if lines else type(e).__name__


def one_line(e):
    """The message of a UserError or an I/O error, as one line."""
    msg = str(e)
    if "Original Traceback" in msg:  # re-raised by a DataLoader from a worker: the original's last line
        last = [l for l in msg.splitlines() if l.strip()][-1].strip()
        m = re.match(r"^([\w.]+): (.*)$", last)
        return m.group(2) if m and m.group(1).endswith("UserError") else last
    if isinstance(e, OSError) and e.strerror:
        names = " -> ".join(f"'{n}'" for n in (e.filename, e.filename2) if n is not None)
        return f"{names}: {e.strerror}" if names else f"{type(e).__name__}: {e.strerror}"
    if not isinstance(e, UserError):
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        if isinstance(e, (EOFError, zlib.error)):
            msg += " (a file is truncated or corrupt)"
    return " ".join(msg.split()) if "\n" in msg else msg
