"""Run a reproduction plan: prepare data, reference statistics, train, sample, evaluate, tables, figures.

    python scripts/reproduce.py configs/plans/demo.toml [--dry-run] [--jobs 2] [--root work/demo]
    python scripts/reproduce.py configs/plans/paper.toml --launcher slurm --nodes 2 --gpus_per_node 4 [--dry-run]
"""

import argparse
import sys

from pipeline import LAUNCHERS, PlanError, reproduce
from guided_diffusion.run.command_line import ArgumentParser


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", help="a TOML plan, e.g. configs/plans/paper.toml")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the stages, whether each is done, and their commands (slurm: also write the jobs)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="independent stages run at once (local launcher)")
    parser.add_argument("--root", default=None, help="override the plan's root folder")
    parser.add_argument("--only", nargs="+", default=None, help="run only stages whose names start with these prefixes")
    parser.add_argument("--launcher", default=None, choices=LAUNCHERS, help="override [plan] launcher")
    parser.add_argument("--nodes", type=int, default=None, help="slurm: nodes per training job (overrides [slurm] nodes)")
    parser.add_argument(
        "--gpus_per_node", type=int, default=None, help="slurm: GPUs (ranks) per node (overrides [slurm] gpus_per_node)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    for name in ("nodes", "gpus_per_node"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        options = ("dry_run", "jobs", "root", "only", "launcher", "nodes", "gpus_per_node")
        counts = reproduce(args.plan, **{name: getattr(args, name) for name in options})
    except (PlanError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
