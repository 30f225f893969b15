"""How a script's run ends when something fails: one line, and every rank of the job stops.

`run_main(body, prog)` runs a script's work and turns any exception into the
end of the job. A failure the user can act on (a bad flag or file, a full or
read-only disk, a diverged run, a lost rank) prints one line,
`<prog>: error: <what and where>`; anything else is a bug and prints its
traceback. Either way, in a job of several ranks the failing rank then ends
all of them (`dist_util.abort`): the others may be waiting for it in a
collective (a checkpoint barrier, a broadcast) and would otherwise wait forever.
"""

import sys
import traceback

import torch.distributed as dist

from .. import dist_util
from .atomic import disk_full_cause

# Failures that come from the input or the machine, not from a bug: they get one line.
USER_ERRORS = (ValueError, OSError, ArithmeticError)


def _one_line(text):
    return " | ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def failure_line(error, user_errors=()):
    """The one-line description of a failure the user can act on, or None for a bug."""
    full = disk_full_cause(error)
    if full is not None and full is not error:
        where = f" writing {full.filename}" if full.filename else ""
        return f"disk full{where}: {full.strerror or 'no space left on device'}"
    if isinstance(error, USER_ERRORS + tuple(user_errors)):
        if type(error).__str__ is OSError.__str__ and error.filename is not None and error.strerror:
            return f"{error.filename}: {error.strerror}"
        return _one_line(error) or type(error).__name__
    if isinstance(error, dist.DistError):
        return f"lost contact with another rank of the job, which probably failed first ({_one_line(error)})"
    return None


def run_main(body, prog, user_errors=(), exit_code=1):
    """Run `body()`, a script's work; returns its exit status (0 when it returns None), or `exit_code`
    after printing how it failed.

    With several ranks a failure never returns: this rank ends the whole job.
    `user_errors` adds exception types that get one line (e.g. TrainingError).
    """
    prefix = f"{prog}: error: " if prog else "error: "
    try:
        status = body()
    except KeyboardInterrupt as interrupt:
        # An interrupt raised again with a message (e.g. by a checkpoint save) says what it cut short.
        detail = _one_line(interrupt)
        print(f"{prefix}interrupted" + (f" {detail}" if detail else ""), file=sys.stderr, flush=True)
        _end(130)
        return 130
    except dist_util.PeerFailed:
        # Rank 0 prints the line and ends the job: one line for the job, not one per rank.
        _end(exit_code, quiet=True)
        return exit_code
    except Exception as error:
        line = failure_line(error, user_errors)
        if line is None:
            traceback.print_exc()
            line = f"unexpected {type(error).__name__} (a bug: the traceback is above)"
        print(prefix + line, file=sys.stderr, flush=True)
        _end(exit_code)
        return exit_code
    return 0 if status is None else status


def _end(exit_code, quiet=False):
    # Also before the process group exists: other ranks may be waiting in the rendezvous.
    if dist_util.in_job_of_several_ranks():
        dist_util.abort(exit_code, quiet=quiet)
    dist_util.cleanup()
