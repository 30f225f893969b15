"""SLURM jobs for a plan: one sbatch script per unfinished stage, and `submit.sh`, which submits
them in dependency order (`--dependency=afterok:`).

The layout comes from the plan's [slurm] table, or from `reproduce.py --nodes N --gpus_per_node G`:

    [slurm]
    nodes = 2               # training runs on N nodes x G GPUs, one rank per GPU
    gpus_per_node = 4       # default: [plan] nproc
    ranks = "torchrun"      # torchrun (c10d rendezvous on the first node) | srun (one task per GPU) | mpiexec
    sample_shards = 8       # a sampling stage is an array of this many one-GPU tasks (default N x G)
    signal_seconds = 120    # SLURM warns a job this long before its time limit
    partition = "gpu"       # any other key is an sbatch option (SBATCH_OPTIONS)
    time = "24:00:00"

Training keeps the plan's global batch (--batch_size x [plan] nproc: the paper's 8) on N x G
ranks, or the plan is refused in one line. A sampling stage is `sbatch --array=0-(n-1)` of
`image_sample.py --shard i --num_shards n` into the stage's one --out_dir; the last task to
finish merges the npz. Training and sampling jobs ask SLURM for USR1 before the time limit
(`--signal=B:USR1@S`, to the job's shell, which hands it to the ranks) and turn the ranks'
exit code 75 (checkpoint written, stopped) into `scontrol requeue`; the requeued job resumes
with --resume_checkpoint auto, or samples the indices still missing. Every job runs the
interpreter that wrote it (this virtualenv's) with this checkout on PYTHONPATH.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys

from guided_diffusion.run.preemption import REQUEUE_EXIT_CODE

from .launch import REPO_ROOT, mpiexec, per_rank_argv, shell_line
from .plan import PlanError

RANK_LAUNCHERS = ("torchrun", "srun", "mpiexec")
# The job id picks the rendezvous port within this range, so two jobs sharing a first node differ.
_PORT_BASE, _PORT_SPAN = 20000, 20000
# Stages that compute Inception features get one GPU.
_ONE_GPU_KINDS = ("ref", "evaluate")
# torchrun forwards these to its workers; USR1 is not among its defaults, and would kill it.
_TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


@dataclasses.dataclass(frozen=True)
class Layout:
    nodes: int
    gpus_per_node: int
    ranks: str
    sample_shards: int
    signal_seconds: int
    options: dict

    @property
    def world_size(self):
        return self.nodes * self.gpus_per_node

    @property
    def description(self):
        return f"--nodes {self.nodes} x --gpus_per_node {self.gpus_per_node} = "


# The [slurm] keys that lay out the ranks (`layout`); every other key is an sbatch option.
LAYOUT_KEYS = ("nodes", "gpus_per_node", "ranks", "sample_shards", "signal_seconds")
# sbatch(1)'s long options that a plan may set for its jobs (written with _ or -), so that a misspelled
# one is refused by the plan check instead of by sbatch, after the jobs were written.
SBATCH_OPTIONS = (
    "account", "partition", "qos", "time", "time_min", "mem", "mem_per_cpu", "mem_per_gpu", "cpus_per_task",
    "cpus_per_gpu", "gres", "gpus", "gpus_per_task", "gpu_bind", "constraint", "exclude", "nodelist",
    "reservation", "exclusive", "requeue", "no_requeue", "mail_type", "mail_user", "comment", "licenses",
    "tmp", "hint", "distribution", "oversubscribe", "priority", "nice", "wckey", "cluster", "clusters",
    "begin", "deadline", "export", "get_user_env", "propagate", "chdir", "output", "error", "open_mode",
    "container", "network", "switches", "threads_per_core", "ntasks_per_core", "sockets_per_node",
    "cores_per_socket", "ntasks_per_gpu", "mincpus", "core_spec", "thread_spec", "power", "profile",
)


def layout(plan):
    """The Layout of `plan.slurm` (PlanError names a bad key)."""
    table = dict(plan.slurm)
    where = f"plan {plan.path}: [slurm]"

    def positive(key, default):
        value = table.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(f"{where} {key} must be a positive integer, got {value!r}")
        return value

    nodes = positive("nodes", 1)
    gpus_per_node = positive("gpus_per_node", plan.nproc)
    ranks = table.pop("ranks", "torchrun")
    if ranks not in RANK_LAUNCHERS:
        raise PlanError(f"{where} ranks {ranks!r}; expected one of {', '.join(RANK_LAUNCHERS)}")
    if ranks == "torchrun" and not _torchrun_forwards_signals():
        raise PlanError(
            f"{where} ranks 'torchrun' needs a torchrun with --signals_to_handle (torch >= 2.9) to pass SIGUSR1 "
            "on to its workers; upgrade torch or set ranks = \"srun\""
        )
    sample_shards = positive("sample_shards", nodes * gpus_per_node)
    signal_seconds = positive("signal_seconds", 120)
    return Layout(nodes, gpus_per_node, ranks, sample_shards, signal_seconds, table)


def _torchrun_forwards_signals():
    from torch.distributed.run import get_args_parser

    return any("--signals_to_handle" in action.option_strings for action in get_args_parser()._actions)


def job_name(stage_name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stage_name)


def _is_training(stage):
    return stage.distributed and stage.kind != "sample"


def _is_sample_array(stage):
    return stage.distributed and stage.kind == "sample"


def rank_line(stage, layout, python):
    """The shell line that starts the stage's processes inside its job."""
    if _is_sample_array(stage):
        return shell_line([python] + stage.argv) + f' --shard "$SLURM_ARRAY_TASK_ID" --num_shards {layout.sample_shards}'
    if not stage.distributed:
        return shell_line([python] + stage.argv)
    argv = per_rank_argv(stage, layout.world_size, layout.description)
    nodes, gpus = layout.nodes, layout.gpus_per_node
    if layout.ranks == "mpiexec":
        return shell_line([mpiexec(), "-n", str(nodes * gpus), "-ppn", str(gpus), python] + argv)
    tasks_per_node = 1 if layout.ranks == "torchrun" else gpus
    srun = ["srun", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--kill-on-bad-exit=1"]
    if layout.ranks == "srun":
        return shell_line(srun + [python] + argv)
    torchrun = [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node", str(gpus)]
    handling = ["--signals_to_handle", _TORCHRUN_SIGNALS, "--shutdown_timeout", str(layout.signal_seconds)]
    rendezvous = '--rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:$rendezvous_port"'
    return f"{shell_line(srun + torchrun)} {rendezvous} {shell_line(handling + argv)}"


def _requeue_block(stage, layout, line):
    """Run `line` in the background, hand it SLURM's USR1, and requeue the job when the ranks ask (exit 75)."""
    torchrun = _is_training(stage) and layout.ranks == "torchrun"
    mark = "signalled=1; " if torchrun else ""
    block = [
        f"# SLURM sends USR1 to this shell {layout.signal_seconds} s before the time limit; the ranks get it from here,",
        f"# finish their step, save (a checkpoint; sampling keeps whole batch files) and exit {REQUEUE_EXIT_CODE}.",
        'ranks_pid=""',
    ]
    if torchrun:
        block.append("signalled=0")
    block += [
        f"trap '{mark}kill -USR1 \"$ranks_pid\" 2>/dev/null || true' USR1",
        f"{line} &",
        "ranks_pid=$!",
        "# wait returns when the signal arrives; wait again until the ranks have ended.",
        'while kill -0 "$ranks_pid" 2>/dev/null; do wait "$ranks_pid" || true; done',
        "status=0",
        'wait "$ranks_pid" || status=$?',
    ]
    condition = f'[ "$status" -eq {REQUEUE_EXIT_CODE} ]'
    if torchrun:
        block.append(f"# torchrun reports its workers' exit {REQUEUE_EXIT_CODE} as 1; the signal it was handed tells.")
        condition += ' || { [ "$signalled" -eq 1 ] && [ "$status" -ne 0 ]; }'
    block += [
        f"if {condition}; then",
        '    echo "requeueing job $SLURM_JOB_ID; it goes on where it stopped"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "    exit 0",
        "fi",
        'exit "$status"',
    ]
    return block


def job_script(stage, layout, python, out_dir, work_dir):
    """The text of the sbatch script of one stage."""
    name = job_name(stage.name)
    log = os.path.abspath(os.path.join(out_dir, name))
    if _is_sample_array(stage):
        resources = [f"--output={log}.%A_%a.log", f"--array=0-{layout.sample_shards - 1}", "--nodes=1", "--ntasks=1"]
        resources.append("--gpus-per-node=1")
    elif stage.distributed:
        tasks_per_node = 1 if layout.ranks == "torchrun" else layout.gpus_per_node
        resources = [f"--output={log}.%j.log", f"--nodes={layout.nodes}", f"--ntasks-per-node={tasks_per_node}"]
        resources.append(f"--gpus-per-node={layout.gpus_per_node}")
    else:
        resources = [f"--output={log}.%j.log", "--nodes=1", "--ntasks=1"]
        resources += ["--gpus-per-node=1"] if stage.kind in _ONE_GPU_KINDS else []
    if stage.distributed:
        resources += [f"--signal=B:USR1@{layout.signal_seconds}", "--requeue", "--open-mode=append"]
    resources += [f"--{key.replace('_', '-')}={value}" for key, value in layout.options.items()]
    body = [
        "set -euo pipefail",
        f"cd {shlex.quote(os.path.abspath(work_dir))}",
        f"export PYTHONPATH={shlex.quote(REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export PYTHONUNBUFFERED=1",
    ]
    if _is_training(stage) and layout.ranks != "mpiexec":
        body += [
            "# Rank 0 and the rendezvous live on the job's first node.",
            'hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            "head_node=${hosts%%$'\\n'*}",  # no `| head`: its early exit would fail the pipe under pipefail
            f"rendezvous_port=$(({_PORT_BASE} + SLURM_JOB_ID % {_PORT_SPAN}))",
        ]
        if layout.ranks == "srun":
            body.append('export MASTER_ADDR="$head_node" MASTER_PORT="$rendezvous_port"')
    line = rank_line(stage, layout, python)
    body += _requeue_block(stage, layout, line) if stage.distributed else [line]
    header = ["#!/usr/bin/env bash", f"#SBATCH --job-name={name}"] + [f"#SBATCH {r}" for r in resources]
    return "\n".join(header + [""] + body) + "\n"


def write_jobs(stages, pending, plan, out_dir, work_dir, python=None):
    """Write the sbatch script of every pending stage and submit.sh; returns submit.sh's path.

    Every script is composed before any is written, so a refused layout writes nothing.
    """
    python = os.path.abspath(python or sys.executable)
    jobs = layout(plan)
    scripts = {s.name: job_script(s, jobs, python, out_dir, work_dir) for s in stages if s.name in pending}
    os.makedirs(out_dir, exist_ok=True)
    lines = [
        "#!/usr/bin/env bash",
        "# Submits every unfinished stage of the plan, each after the stages it needs.",
        "set -euo pipefail",
        f"cd {shlex.quote(os.path.abspath(out_dir))}",
    ]
    variables = {}
    for stage in stages:
        if stage.name not in scripts:
            continue
        script = job_name(stage.name) + ".sbatch"
        with open(os.path.join(out_dir, script), "w") as f:
            f.write(scripts[stage.name])
        after = [variables[d] for d in stage.deps if d in variables]
        dependency = f"--dependency=afterok:{':'.join('$' + v for v in after)} " if after else ""
        var = "JOB_" + re.sub(r"[^A-Za-z0-9]", "_", stage.name).upper()
        variables[stage.name] = var
        lines.append(f"{var}=$(sbatch --parsable {dependency}{shlex.quote(script)})")
        lines.append(f'echo "{stage.name}: job ${var}"')
    submit = os.path.join(out_dir, "submit.sh")
    with open(submit, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(submit, 0o755)
    return submit


def submit(submit_path, stream):
    """Run submit.sh when sbatch is on PATH; returns whether it ran (and succeeded)."""
    if shutil.which("sbatch") is None:
        print(f"sbatch is not on PATH here; submit the jobs on a login node with: bash {submit_path}", file=stream)
        return False
    completed = subprocess.run(["bash", submit_path], capture_output=True, text=True)
    stream.write(completed.stdout)
    if completed.returncode != 0:
        raise PlanError(f"{submit_path} failed (exit {completed.returncode}): {completed.stderr.strip()}")
    return True
