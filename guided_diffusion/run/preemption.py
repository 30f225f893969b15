"""Stopping cleanly when the cluster asks: SIGTERM (preemption, scancel) or SIGUSR1 (SLURM's
`--signal=B:USR1@120`, sent before the time limit).

Training records the signal and looks at the next step boundary, where no collective is in
flight. A signal may reach the ranks at different times, so they agree with an all-reduce
there: if any rank has one, every rank stops at that same step, the checkpoint is written,
and the script exits with REQUEUE_EXIT_CODE, which the generated SLURM job turns into
`scontrol requeue`; the requeued job resumes with `--resume_checkpoint auto`.

Sampling resumes by index, so it only needs the signal to end the process through an
exception: atomic writes then remove their temp file, and nothing half-written ever has a
real name.
"""

import signal
import threading

from .. import dist_util

# sysexits' EX_TEMPFAIL: "a temporary failure; the user is invited to retry".
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequested(BaseException):
    """Raised by `raise_on_stop_signals` in the main thread; a BaseException so that no `except Exception` swallows it."""

    def __init__(self, signal_name):
        super().__init__(signal_name)
        self.signal_name = signal_name


class _Handlers:
    """Installs `handler` for STOP_SIGNALS while the block runs (main thread only), restoring the previous ones."""

    def __init__(self, handler):
        self._handler = handler
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        return False


class StopSignals(_Handlers):
    """Records the first stop signal; `with StopSignals() as stop: ... stop.requested`."""

    def __init__(self):
        super().__init__(self._record)
        self.signal_name = None

    def _record(self, signum, frame):
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    @property
    def requested(self):
        return self.signal_name is not None


def any_rank_requested(stop):
    """True on every rank iff some rank's `stop` has a signal; a collective, call on every rank together."""
    return not dist_util.all_ranks_true(not stop.requested)


def raise_on_stop_signals():
    """A block in which a stop signal raises StopRequested in the main thread."""

    def handler(signum, frame):
        raise StopRequested(signal.Signals(signum).name)

    return _Handlers(handler)
