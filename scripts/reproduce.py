"""Run a reproduction plan: prepare data, reference statistics, train, sample, evaluate, tables, figures.

    python scripts/reproduce.py configs/plans/demo.toml [--dry-run] [--jobs 2] [--root work/demo]
"""

import argparse
import sys

from pipeline import PlanError, reproduce


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", help="a TOML plan, e.g. configs/plans/paper.toml")
    parser.add_argument("--dry-run", action="store_true", help="list the stages, whether each is done, and their commands")
    parser.add_argument("--jobs", type=int, default=1, help="independent stages run at once (local launcher)")
    parser.add_argument("--root", default=None, help="override the plan's root folder")
    parser.add_argument("--only", nargs="+", default=None, help="run only stages whose names start with these prefixes")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        counts = reproduce(args.plan, dry_run=args.dry_run, jobs=args.jobs, root=args.root, only=args.only)
    except (PlanError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
