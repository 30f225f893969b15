"""The GPU check's frame: time-boxed steps that record themselves, and the prerequisites.

Standard library only at import time: the prerequisites decide whether the project
can be imported at all (the GPU machines have no blobfile; `install_blobfile_shim`
puts a local-path stand-in on the path first).
"""

import contextlib
import importlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHIM_DIR = os.path.join(HERE, "blobfile_shim")
STEPS_FILE = "steps.json"
# What comes back from a lent GPU machine: at most 8 files, none more than two folders below the output folder.
RETURNED_FILES_MAX = 8
RETURNED_DEPTH_MAX = 2
# Where a run command may carry ADM's checkout (an ignored third_party/ folder, or the carried shared/ tree).
ADM_DIR_CANDIDATES = ("third_party/guided-diffusion", "shared/guided-diffusion", "shared/third_party/guided-diffusion")
ADM_DIR_ENV = "DEBIAS_ADM_GUIDED_DIFFUSION"

# What the check imports: hard ones abort it, optional ones are reported.
HARD_MODULES = ("torch", "numpy", "PIL")
OPTIONAL_MODULES = ("scipy", "torchvision", "mpi4py", "pytest", "tensorboard", "blobfile", "torch_fidelity")
PROJECT_MODULES = (
    "guided_diffusion.train_util", "guided_diffusion.sampling", "guided_diffusion.noise", "datasets.embedded",
    "scripts.benchmarks.gpu_benchmark", "scripts.benchmarks.adm_baseline",
)


def write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


class StepFailed(Exception):
    """A step that ran to its end but whose outcome is a failure; `result` is still recorded."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class StepTimeout(Exception):
    """Raised inside a step by `time_limit` when its deadline passes."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raise StepTimeout in this (main) thread after `seconds`, e.g. inside a torch.compile that outlives its row.

    A timer signal, not a check between rows: a compile is one call that no row loop can interrupt.
    """
    if seconds <= 0:
        raise StepTimeout("no time left")

    def expire(signum, frame):
        raise StepTimeout(f"did not finish within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Deadline:
    """The end of one step's budget, on the runner's clock; `report(partial)` records what a step has so far."""

    def __init__(self, end, clock, report=lambda partial: None):
        self.end, self.clock, self.report = end, clock, report

    def remaining(self):
        return self.end - self.clock()

    def expired(self, margin=0.0):
        return self.remaining() <= margin


class StepRunner:
    """Runs steps in order, each under min(its budget, what the whole run has left).

    A step whose budget is gone is recorded as skipped; one that raises is recorded
    as failed with its traceback, and the next step runs. Every step's result goes into
    steps.json, the one results file (a step's partial result too, whenever it calls
    `deadline.report`), so a run killed from outside still leaves what it measured.
    `clock` is injectable so that tests can move time without waiting.
    """

    def __init__(self, out_dir, total_s, clock=time.monotonic, min_step_s=1.0):
        self.out_dir, self.clock, self.min_step_s = out_dir, clock, min_step_s
        self.end = clock() + total_s
        self.records = {}

    def remaining(self):
        return self.end - self.clock()

    def run(self, name, budget_s, fn):
        """fn(deadline) -> a JSON-able result; returns the record of the step."""
        budget = min(budget_s, self.remaining()) if budget_s is not None else self.remaining()
        record = dict(step=name, budget_s=round(budget, 2))
        if budget < max(self.min_step_s, 1e-9):
            record.update(status="skipped", reason=f"budget exhausted ({budget:.1f} s left)")
        else:
            start = self.clock()

            def report(partial):
                record.update(status="running", result=partial)
                self._write(name, record)

            try:
                record.update(status="ok", result=fn(Deadline(start + budget, self.clock, report)))
            except StepFailed as failure:
                record.update(status="failed", error=str(failure), result=failure.result)
            except Exception as error:  # noqa: BLE001  (a failed step must not stop the others)
                record.update(status="failed", error=f"{type(error).__name__}: {error}",
                              traceback=traceback.format_exc()[-4000:])
            record["seconds"] = round(self.clock() - start, 2)
            if record["status"] == "ok" and record["seconds"] > budget + 1:
                record["overran_s"] = round(record["seconds"] - budget, 2)
        self._write(name, record)
        return record

    def _write(self, name, record):
        self.records[name] = record
        write_json(os.path.join(self.out_dir, STEPS_FILE), list(self.records.values()))

    def failed(self):
        return [r for r in self.records.values() if r["status"] == "failed"]


def returned_file_problems(out_dir):
    """What would not come back from the GPU machine: too many files, or files nested too deep (one line each)."""
    files, too_deep = [], []
    for root, _, names in os.walk(out_dir):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), out_dir)
            files.append(relative)
            if relative.count(os.sep) > RETURNED_DEPTH_MAX:
                too_deep.append(relative)
    problems = [f"{path} is more than {RETURNED_DEPTH_MAX} folders deep" for path in sorted(too_deep)]
    if len(files) > RETURNED_FILES_MAX:
        problems.append(f"{len(files)} files, at most {RETURNED_FILES_MAX} come back: {', '.join(sorted(files))}")
    return problems


def find_adm_dir(repo=REPO, environ=os.environ):
    """ADM's checkout: $DEBIAS_ADM_GUIDED_DIFFUSION, else the first carried place that holds one (else the first place)."""
    if environ.get(ADM_DIR_ENV):
        return os.path.abspath(environ[ADM_DIR_ENV])
    candidates = [os.path.join(repo, path) for path in ADM_DIR_CANDIDATES]
    return next((path for path in candidates if is_adm_checkout(path)), candidates[0])


def is_adm_checkout(path):
    return os.path.isfile(os.path.join(path, "guided_diffusion", "train_util.py"))


def install_blobfile_shim():
    """Put the local-path blobfile stand-in on the path if the real one is absent; True if it did."""
    try:
        if importlib.util.find_spec("blobfile") is not None:
            return False
    except ImportError:  # a finder that hides the module (tests.without_modules) says so by raising
        pass
    sys.path.insert(0, SHIM_DIR)
    importlib.invalidate_caches()
    return True


def _module_version(name):
    try:
        module = importlib.import_module(name)
    except Exception as error:  # noqa: BLE001  (any import failure is the answer)
        return None, f"{type(error).__name__}: {error}"
    return getattr(module, "__version__", "present"), None


def prerequisites(require_cuda, adm_dir, min_free_gib=0.0):
    """What this machine offers, and the hard prerequisites it lacks (a list of one-line reasons)."""
    shimmed = install_blobfile_shim()
    report = dict(python=sys.version.split()[0], platform=platform.platform(), blobfile_shim=shimmed,
                  modules={}, project_modules={}, missing=[])
    for name in HARD_MODULES + OPTIONAL_MODULES:
        version, error = _module_version(name)
        report["modules"][name] = version or f"missing ({error})"
        if name in HARD_MODULES and error:
            report["missing"].append(f"module {name}: {error}")
    for name in PROJECT_MODULES:
        _, error = _module_version(name)
        report["project_modules"][name] = error or "ok"
        if error:
            report["missing"].append(f"project module {name}: {error}")
    report["cuda"] = _cuda_report()
    if require_cuda and not report["cuda"].get("available"):
        report["missing"].append("CUDA: torch.cuda.is_available() is False")
    free = report["cuda"].get("free_gib")
    if require_cuda and free is not None and free < min_free_gib:
        report["missing"].append(f"CUDA: {free:.1f} GiB free, the check needs {min_free_gib}")
    report["adm_checkout"] = dict(path=adm_dir, present=is_adm_checkout(adm_dir), commit=_git_commit(adm_dir),
                                  looked_in=[ADM_DIR_ENV] + list(ADM_DIR_CANDIDATES))
    return report


def _cuda_report():
    try:
        import torch
    except Exception:  # noqa: BLE001
        return dict(available=False)
    report = dict(torch=torch.__version__, cuda_build=torch.version.cuda, available=torch.cuda.is_available())
    if report["available"]:
        free, total = torch.cuda.mem_get_info()
        report.update(device=torch.cuda.get_device_name(0), count=torch.cuda.device_count(),
                      capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                      free_gib=free / 2**30, total_gib=total / 2**30, bf16=torch.cuda.is_bf16_supported())
    return report


def _git_commit(path):
    if not os.path.isdir(path):
        return None
    try:
        result = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def subprocess_env():
    """The environment for child processes: the repository, and the blobfile shim if this process uses it."""
    paths = [REPO] + ([SHIM_DIR] if SHIM_DIR in sys.path else []) + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
