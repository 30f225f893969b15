"""Write the Markdown report of a plan's results: mini tables, per-timestep readings, figures, timings.

    python scripts/make_report.py configs/plans/demo.toml --root work/demo --out reports/demo
"""

import argparse
import sys

from pipeline import PlanError
from pipeline.report import write_report
from guided_diffusion.run.command_line import ArgumentParser


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan")
    parser.add_argument("--root", default=None, help="the plan's root folder (default: the plan's own)")
    parser.add_argument("--out", required=True, help="folder for README.md and its figures")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.plan, args.root, args.out)
    except (PlanError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
