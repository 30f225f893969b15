"""Launchers: how one stage's command becomes processes (one, mpiexec, torchrun) or a Slurm job."""

import os
import re
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


def _mpiexec():
    # The mpich wheel installs mpiexec beside the interpreter; a system one works too.
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else (shutil.which("mpiexec") or "mpiexec")


def command(stage, launcher, nproc, python=None):
    """The argv that runs `stage` under `launcher` with `nproc` processes for distributed stages."""
    python = python or sys.executable
    if not stage.distributed or launcher == "local" or nproc == 1:
        return [python] + stage.argv
    if launcher == "mpiexec":
        return [_mpiexec(), "-n", str(nproc), python] + stage.argv
    if launcher in ("torchrun", "slurm"):
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + stage.argv
    raise ValueError(f"unknown launcher {launcher!r}; expected local, mpiexec, torchrun or slurm")


def shell_line(argv):
    return " ".join(shlex.quote(a) for a in argv)


def _job_name(stage_name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stage_name)


def write_slurm_scripts(stages, pending, plan, out_dir, repo_dir):
    """One sbatch script per pending stage and a submit script chaining them with afterok dependencies.

    Returns the path of the submit script.
    """
    os.makedirs(out_dir, exist_ok=True)
    options = dict(plan.slurm)
    gpus = options.pop("gpus_per_node", plan.nproc)
    lines = [
        "#!/usr/bin/env bash",
        "# Submits every unfinished stage of the plan, each after the stages it needs.",
        "set -euo pipefail",
        f"cd {shlex.quote(os.path.abspath(out_dir))}",
    ]
    variables = {}
    for stage in stages:
        if stage.name not in pending:
            continue
        job = _job_name(stage.name)
        script = os.path.join(out_dir, job + ".sbatch")
        header = [
            "#!/usr/bin/env bash",
            f"#SBATCH --job-name={job}",
            f"#SBATCH --output={os.path.abspath(os.path.join(out_dir, job + '.%j.log'))}",
            "#SBATCH --nodes=1",
        ]
        if stage.distributed:
            header.append(f"#SBATCH --gpus-per-node={gpus}")
        header += [f"#SBATCH --{key.replace('_', '-')}={value}" for key, value in options.items()]
        body = [
            "set -euo pipefail",
            f"cd {shlex.quote(os.path.abspath(repo_dir))}",
            f"export PYTHONPATH={shlex.quote(REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}",
            shell_line(command(stage, "slurm", plan.nproc, python="python")),
        ]
        with open(script, "w") as f:
            f.write("\n".join(header + ["", *body]) + "\n")
        after = [variables[d] for d in stage.deps if d in variables]
        dependency = f"--dependency=afterok:{':'.join('$' + v for v in after)} " if after else ""
        var = "JOB_" + re.sub(r"[^A-Za-z0-9]", "_", stage.name).upper()
        variables[stage.name] = var
        lines.append(f"{var}=$(sbatch --parsable {dependency}{shlex.quote(os.path.basename(script))})")
        lines.append(f'echo "{stage.name}: job ${var}"')
    submit = os.path.join(out_dir, "submit.sh")
    with open(submit, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(submit, 0o755)
    return submit
