"""Stopping cleanly when the cluster asks: SIGTERM (preemption, scancel) or SIGUSR1 (SLURM's
`--signal=B:USR1@120`, sent before the time limit).

Training records the signal and looks at it in the next step's one collective (host_sync.agree,
with the step's finiteness). A signal may reach the ranks at different times, so they agree
there: if any rank has one, every rank drops that step and stops at the boundary before it, the
checkpoint is written,
and the script exits with REQUEUE_EXIT_CODE, which the generated SLURM job turns into
`scontrol requeue`; the requeued job resumes with `--resume_checkpoint auto`.

Sampling resumes by index, so it only needs the signal to end the process through an
exception: atomic writes then remove their temp file, and nothing half-written ever has a
real name.
"""

import signal
import threading

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


def raise_on_stop_signals():
    """A block in which a stop signal raises StopRequested in the main thread."""

    def handler(signum, frame):
        raise StopRequested(signal.Signals(signum).name)

    return _Handlers(handler)
