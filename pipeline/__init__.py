"""The reproduction pipeline: a plan file -> stages -> runs, skipping what is already done."""

import os
import sys

from . import launch, runner
from .plan import Plan, PlanError, load_plan
from .stages import Stage, expand

__all__ = ["Plan", "PlanError", "Stage", "expand", "load_plan", "reproduce"]


def reproduce(plan_path, dry_run=False, jobs=1, root=None, only=None, stream=None):
    """Expand and run (or list, or write Slurm jobs for) a plan; returns the runner's status counts.

    `only` keeps the stages whose names start with one of the given prefixes,
    plus nothing else: their dependencies must already be done.
    """
    stream = stream or sys.stdout
    plan = load_plan(plan_path, root=root)
    stages = expand(plan)
    if only:
        keep = [s for s in stages if any(s.name.startswith(prefix) for prefix in only)]
        if not keep:
            raise PlanError(f"--only {' '.join(only)} matches no stage of plan {plan_path}")
        kept = {s.name for s in keep}
        for s in keep:
            s.deps = [d for d in s.deps if d in kept]
        stages = keep
    if dry_run:
        return runner.describe(stages, plan, stream=stream)
    if plan.launcher == "slurm":
        submit = launch.write_slurm_scripts(
            stages, set(runner.pending_stages(stages)), plan, plan.under_root("slurm"), os.getcwd()
        )
        print(f"wrote Slurm jobs; submit them with: bash {submit}", file=stream)
        return {"written": len(runner.pending_stages(stages))}
    outcomes = runner.run(stages, plan, jobs=jobs, stream=stream)
    return runner.summarize(outcomes, stream=stream)
