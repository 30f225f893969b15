"""The reproduction pipeline: a plan file -> stages -> runs, skipping what is already done."""

import os
import sys

from . import runner, slurm
from .plan import LAUNCHERS, Plan, PlanError, load_plan
from .plan_check import check_plan
from .stages import Stage, expand

__all__ = ["Plan", "PlanError", "Stage", "expand", "load_plan", "reproduce"]


def reproduce(plan_path, dry_run=False, jobs=1, root=None, only=None, stream=None, launcher=None, nodes=None, gpus_per_node=None):
    """Expand and run (or list, or write and submit SLURM jobs for) a plan; returns the runner's status counts.

    `only` keeps the stages whose names start with one of the given prefixes,
    plus nothing else: their dependencies must already be done. `launcher`
    overrides [plan] launcher; `nodes` and `gpus_per_node` the [slurm] layout.
    """
    stream = stream or sys.stdout
    plan = load_plan(plan_path, root=root)
    if launcher is not None:
        if launcher not in LAUNCHERS:
            raise PlanError(f"--launcher {launcher!r}; expected one of {', '.join(LAUNCHERS)}")
        plan.launcher = launcher
    layout_given = {k: v for k, v in (("nodes", nodes), ("gpus_per_node", gpus_per_node)) if v is not None}
    if layout_given and plan.launcher != "slurm":
        raise PlanError(f"--nodes and --gpus_per_node lay out SLURM jobs; add --launcher slurm (the plan's is {plan.launcher})")
    plan.slurm = {**plan.slurm, **layout_given}
    stages = expand(plan)
    check_plan(plan, stages)
    if only:
        keep = [s for s in stages if any(s.name.startswith(prefix) for prefix in only)]
        if not keep:
            raise PlanError(f"--only {' '.join(only)} matches no stage of plan {plan_path}")
        kept = {s.name for s in keep}
        for s in keep:
            s.deps = [d for d in s.deps if d in kept]
        stages = keep
    if plan.launcher == "slurm":
        pending = runner.pending_stages(stages)
        submit = slurm.write_jobs(stages, set(pending), plan, plan.under_root("slurm"), os.getcwd())
        if dry_run:
            layout = slurm.layout(plan)
            counts = runner.describe(stages, plan, stream=stream, line=lambda s: slurm.rank_line(s, layout, sys.executable))
            print(f"wrote {len(pending)} SLURM job(s); submit them with: bash {submit}", file=stream)
            return counts
        slurm.submit(submit, stream)
        return {"written": len(pending)}
    if dry_run:
        return runner.describe(stages, plan, stream=stream)
    outcomes = runner.run(stages, plan, jobs=jobs, stream=stream)
    return runner.summarize(outcomes, stream=stream)
