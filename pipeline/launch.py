"""Launchers: how one stage's command becomes processes (one, mpiexec, torchrun); slurm.py writes SLURM jobs."""

import os
import shlex
import shutil
import sys


# The checkout holding `scripts/` beside this package: stages run `python -m scripts.image_train` from anywhere.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage_environment(threads=None):
    """The environment of a stage's processes: the checkout importable, unbuffered output, optional thread count."""
    paths = [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))
    if threads:
        # Stages running side by side share the cores instead of each taking all of them.
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def mpiexec():
    # The mpich wheel installs mpiexec beside the interpreter; a system one works too.
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else (shutil.which("mpiexec") or "mpiexec")


def with_flag(argv, flag, value):
    """`argv` with `flag` set to `value`: replaced where given, appended otherwise."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def per_rank_argv(stage, world_size, layout=""):
    """The stage's arguments on `world_size` ranks: training gets the --batch_size that keeps its global batch.

    `layout` describes where the rank count comes from, for the error.
    """
    if stage.global_batch is None:
        return list(stage.argv)
    if stage.global_batch % world_size:
        raise ValueError(
            f"{stage.name}: {layout}{world_size} rank(s) cannot keep the global batch of {stage.global_batch} "
            f"(--batch_size x [plan] nproc); use a rank count that divides {stage.global_batch}"
        )
    return with_flag(stage.argv, "--batch_size", str(stage.global_batch // world_size))


def command(stage, launcher, nproc, python=None):
    """The argv that runs `stage` under `launcher` with `nproc` processes for distributed stages."""
    if launcher not in ("local", "mpiexec", "torchrun"):
        raise ValueError(f"launcher {launcher!r} runs no processes here; expected local, mpiexec or torchrun (slurm writes jobs)")
    python = python or sys.executable
    several = stage.distributed and launcher != "local" and nproc > 1
    argv = per_rank_argv(stage, nproc if several else 1)
    if not several:
        return [python] + argv
    if launcher == "mpiexec":
        return [mpiexec(), "-n", str(nproc), python] + argv
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + argv


def shell_line(argv):
    return " ".join(shlex.quote(a) for a in argv)
