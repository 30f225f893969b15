"""Our speed against ADM's own code on the same device: gpu_benchmark.py's table for both, and ours/ADM ratios.

    git clone https://github.com/openai/guided-diffusion third_party/guided-diffusion   # git-ignored, never committed
    python -m scripts.benchmarks.adm_baseline --adm_dir third_party/guided-diffusion --precisions bf16,fp16 --compile both
    python -m scripts.benchmarks.adm_baseline --adm_dir third_party/guided-diffusion --tiny --precisions fp32 \
        --adm_precisions fp32 --compile off          # a CPU check of the harness

ADM runs in a separate process (adm_worker.py) with its checkout first on the path,
building its model from the same flags (ADM's own create_model_and_diffusion) and timing
its TrainLoop.run_step and sampling loops exactly as ours are timed (measure.py). ADM
knows fp32 and fp16 (--use_fp16: float16 torso, loss scaling); the targets compare our
rows with ADM's fp16. ADM samples at the batch ours used (halved if it does not fit).
"""

import json
import os
import subprocess
import sys

from guided_diffusion import dist_util
from scripts.benchmarks import gpu_benchmark, measure

HERE = os.path.dirname(os.path.abspath(__file__))
ADM_PRECISIONS = ("fp32", "fp16")


def build_parser():
    parser = gpu_benchmark.build_parser()
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--adm_dir", default=os.path.join(gpu_benchmark.REPO, "third_party", "guided-diffusion"),
                        help="a checkout of openai/guided-diffusion")
    parser.add_argument("--adm_precisions", default="fp32,fp16", help="ADM's precisions to measure (fp32, fp16)")
    return parser


def check_adm_dir(adm_dir):
    if not os.path.isfile(os.path.join(adm_dir, "guided_diffusion", "train_util.py")):
        raise ValueError(
            f"--adm_dir {adm_dir}: no openai/guided-diffusion checkout there "
            f"(git clone https://github.com/openai/guided-diffusion {adm_dir})"
        )


def adm_sample_batch(args, our_rows):
    if args.sample_batch != "auto":
        return int(args.sample_batch)
    batches = [r["batch"] for r in our_rows if r["kind"] == "sample"]
    return max(batches, default=1)


def run_adm(args, flags, precisions, sample_batch, device, timeout=None, env=None):
    """ADM's rows, measured in a worker process with ADM's package on the path (within `timeout` seconds)."""
    settings = dict(
        adm_dir=os.path.abspath(args.adm_dir), flags=flags, precisions=precisions, parts=args.parts,
        batch_size=args.batch_size, train_steps=args.train_steps, sample_steps=args.sample_steps, warmup=args.warmup,
        sample_batch=sample_batch, peak_tflops=args.peak_tflops,
        training_flops=gpu_benchmark.training_flops(flags, args.batch_size, device),
        forward_flops_per_image=gpu_benchmark.forward_flops_per_image(flags, device),
    )
    launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    # A given env's PYTHONPATH (gpu_check's blobfile stand-in) goes after ADM's package, so ADM's is imported.
    extra = [env["PYTHONPATH"]] if env and env.get("PYTHONPATH") else []
    env = {k: v for k, v in (env or os.environ).items() if k not in launch}
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(args.adm_dir)] + extra)
    command = [sys.executable, os.path.join(HERE, "adm_worker.py"), json.dumps(settings)]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ADM's run did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise RuntimeError(f"ADM's run failed:\n{result.stderr[-3000:]}")
    return measure.parse_emitted(result.stdout)


def ratio_lines(ours, adm):
    """ours images/s over ADM's, per ADM precision, for matching rows (training; the same sampler)."""
    def setting(row):
        return "train" if row["kind"] == "train" else row["label"].removeprefix("ADM ").split()[0]

    adm_by = {(setting(r), r["label"].split()[-1]): r for r in adm}
    adm_precisions = sorted({p for _, p in adm_by}, key=ADM_PRECISIONS.index)
    lines = [f"{'ours / ADM, images/s':40s}" + "".join(f"{'vs ADM ' + p:>14s}" for p in adm_precisions)]
    for row in ours:
        name = row["label"] if row["kind"] == "sample" else f"train {row['label']}"
        cells = []
        for precision in adm_precisions:
            base = adm_by.get((setting(row), precision))
            cells.append(f"{row['images_per_s'] / base['images_per_s']:13.2f}x" if base else f"{'—':>14s}")
        lines.append(f"  {name:38s}" + "".join(cells))
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    adm_precisions = [p.strip() for p in args.adm_precisions.split(",") if p.strip()]
    unknown = [p for p in adm_precisions if p not in ADM_PRECISIONS]
    try:
        if unknown:
            raise ValueError(f"--adm_precisions {','.join(unknown)}: ADM runs {' and '.join(ADM_PRECISIONS)} only")
        check_adm_dir(args.adm_dir)
        flags = gpu_benchmark.model_flags(args)
        dist_util.setup_dist()
        try:
            print(gpu_benchmark.describe(args, flags, dist_util.dev()), flush=True)
            ours = gpu_benchmark.run(args)
            device = dist_util.dev()
        finally:
            dist_util.cleanup()
        adm = run_adm(args, flags, adm_precisions, adm_sample_batch(args, ours), device)
    except (ValueError, RuntimeError) as err:
        print(f"adm_baseline.py: error: {err}", file=sys.stderr)
        return 1
    print("ours\n" + measure.format_rows(ours))
    print("ADM (openai/guided-diffusion)\n" + measure.format_rows(adm))
    print(ratio_lines(ours, adm))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(setting=vars(args), ours=ours, adm=adm), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
