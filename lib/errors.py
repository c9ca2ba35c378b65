"""The one-line error form: a problem with the user's input or environment is printed as
`error: ...` on stderr with exit status 2, never a traceback (engine.run does this)."""
import re
import zlib


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


# I/O faults (a full or read-only disk, a missing permission, a truncated or corrupt file) reaching
# engine.run from anywhere are turned into the same one line. Code that knows which file and what
# to do about it (datasets, checkpoints) raises a UserError saying so instead.
IO_ERRORS = (OSError, EOFError, zlib.error)


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
