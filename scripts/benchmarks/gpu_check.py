"""Every GPU measurement in one command of at most --total_s seconds, small result files into --out.

    python -m scripts.benchmarks.gpu_check --out "$OUT"           # on the lent GPU (9 minutes)
    python -m scripts.benchmarks.gpu_check --tiny --out /tmp/x    # the same path on the CPU in seconds

Steps, each under its own budget (--budgets name=seconds,...), their results in one file, steps.json,
even when a step fails or is skipped: prereqs, cuda_tests, train, sample (the speed rows) and mini
(whose samples are mini/<weighting>/samples_*.npz, with FID_README.txt). The mini reproduction takes
whatever time the others leave. At most 8 files, two folders deep, come back from a lent GPU machine:
the check says so and fails if its folder holds more. Any failed step makes the exit status 1,
with one line naming it.
"""

import argparse
import os
import sys
import time

from scripts.benchmarks import gpu_check_base as base
from guided_diffusion.run.command_line import ArgumentParser

DEFAULT_BUDGETS = dict(prereqs=30, cuda_tests=150, train=150, sample=60, mini=None)
TINY_BUDGETS = dict(prereqs=30, cuda_tests=40, train=20, sample=20, mini=None)
DEFAULT_TOTAL_S = 9 * 60 - 20


def parse_budgets(text, defaults):
    budgets = dict(defaults)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in budgets:
            raise ValueError(f"--budgets {item}: no step {name!r} (steps: {', '.join(budgets)})")
        budgets[name] = float(value)
    return budgets


def build_parser():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", ""), help="result folder (default: $OUT)")
    parser.add_argument("--tiny", action="store_true", help="tiny models, 1-2 steps, on whatever device: a CPU check")
    parser.add_argument("--total_s", type=float, default=None, help=f"whole-run budget (default {DEFAULT_TOTAL_S})")
    parser.add_argument("--budgets", default="", help="per-step seconds, e.g. cuda_tests=120,train=0 (0 skips)")
    parser.add_argument("--adm_dir", default=None, help=f"ADM's checkout (default ${base.ADM_DIR_ENV}, else the first of "
                        f"{', '.join(base.ADM_DIR_CANDIDATES)} that holds one)")
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="training precisions")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="both")
    parser.add_argument("--compile_estimate_s", type=float, default=45.0, help="skip a compiled row with less left")
    parser.add_argument("--train_steps", type=int, default=10)
    parser.add_argument("--sample_steps", type=int, default=5)
    parser.add_argument("--sample_batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="the mini reproduction's seed")
    parser.add_argument("--noise_device", default="", help="mini sampling noise: cpu or device (default device on CUDA)")
    return parser


def main(argv=None, clock=time.monotonic):
    args = build_parser().parse_args(argv)
    if not args.out:
        print("gpu_check: give --out or set $OUT", file=sys.stderr)
        return 2
    try:
        budgets = parse_budgets(args.budgets, TINY_BUDGETS if args.tiny else DEFAULT_BUDGETS)
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    args.adm_dir = os.path.abspath(args.adm_dir) if args.adm_dir else base.find_adm_dir()
    total = args.total_s if args.total_s is not None else (90.0 if args.tiny else DEFAULT_TOTAL_S)
    runner = base.StepRunner(args.out, total, clock=clock, min_step_s=0.0 if args.tiny else 1.0)
    found = {}

    def check(deadline):
        found.update(base.prerequisites(require_cuda=not args.tiny, adm_dir=args.adm_dir))
        return found

    record = runner.run("prereqs", budgets["prereqs"], check)
    prereqs = found if found.get("missing") is not None else dict(missing=[record.get("error") or record.get("reason")])
    if prereqs["missing"]:
        print(f"gpu_check: missing hard prerequisite: {'; '.join(prereqs['missing'])}", file=sys.stderr)
        return 3
    from guided_diffusion import dist_util
    from scripts.benchmarks import gpu_check_steps as steps
    from scripts.benchmarks import mini_repro

    cuda = bool(prereqs["cuda"].get("available"))
    print(f"gpu_check: {prereqs['cuda'].get('device', 'cpu')}, torch {prereqs['cuda'].get('torch')}, "
          f"python {prereqs['python']}, ADM checkout: {prereqs['adm_checkout']['present']}", flush=True)
    runner.run("cuda_tests", budgets["cuda_tests"], lambda d: steps.cuda_tests(d, cuda))
    precisions = [p for p in args.precisions.split(",") if p] if not args.tiny else ["fp32"]
    compile_settings = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile if not args.tiny else "off"]
    dist_util.setup_dist()
    try:
        bench = steps.benchmark_args(args.tiny, args.adm_dir, 1 if args.tiny else args.train_steps,
                                     1 if args.tiny else args.sample_steps, 0 if args.tiny else 2,
                                     2 if args.tiny else args.sample_batch)
        runner.run("train", budgets["train"], lambda d: steps.training_speed(
            d, bench, precisions, compile_settings, args.compile_estimate_s))
        sample_precisions = ["fp32"] if args.tiny else [p for p in ("fp32", "bf16") if p in precisions] or precisions[:1]
        noise_devices = ["cpu"] if not cuda else ["device", "cpu"]
        runner.run("sample", budgets["sample"], lambda d: steps.sampling_speed(
            d, args.out, bench, sample_precisions, noise_devices))
        runner.run("mini", budgets["mini"], lambda d: mini_repro.run(
            d, args.out, args.tiny, noise_device=args.noise_device, seed=args.seed))
    finally:
        dist_util.cleanup()
    for name in ("train", "sample"):
        result = runner.records.get(name, {}).get("result")
        if isinstance(result, dict):
            print(steps.format_table(result))
    print("\n".join(steps.summary_lines(runner.records.values())))
    failed = [f"{r['step']} ({r['error'][:200]})" for r in runner.failed()]
    unreturned = base.returned_file_problems(args.out)
    if failed or unreturned:
        print(f"gpu_check: failed: {'; '.join(failed + unreturned)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
