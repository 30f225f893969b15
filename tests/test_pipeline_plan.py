"""Plans expand into the expected stages; launchers and Slurm scripts are right as text."""

import importlib.util
import io
import os
import re

import pytest

from guided_diffusion import sampling
from pipeline import PlanError, Stage, expand, load_plan, reproduce
from pipeline.plan import Plan
from scripts import image_sample, image_train
from pipeline import launch, runner, slurm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLANS = os.path.join(REPO, "configs", "plans")


def kinds(stages):
    counts = {}
    for s in stages:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    return counts


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Plans and their stages must not depend on the working directory."""
    monkeypatch.chdir(tmp_path)


def test_paper_plan_expands_to_the_full_grid(tmp_path):
    plan = load_plan(os.path.join(PLANS, "paper.toml"), root=str(tmp_path))
    stages = expand(plan)
    counts = kinds(stages)
    assert counts["prepare"] == 6 and counts["ref"] == 6
    # 6 datasets x 4 weightings, plus the x0 and v targets of Table 4; one training stage per checkpoint
    # (FFHQ's 10 for Fig. 7a and Table 3, one elsewhere).
    runs = {s.argv[s.argv.index("--log_dir") + 1] for s in stages if s.kind == "train"}
    assert len(runs) == 6 * 4 + 2
    assert counts["train"] == 4 * 10 + (4 + 2) + 4 * 4
    # FFHQ: 4 x 6 step counts + 2 runs x 9 more checkpoints (Fig. 7a, Table 3); CelebA-HQ: 4 x 4 + 2;
    # AFHQ-dog and MetFaces: 4 x 4 each; CIFAR-10 and ImageNet: 4 x 1 each.
    assert counts["sample"] == (24 + 18) + (16 + 2) + 16 + 16 + 4 + 4
    assert counts["evaluate"] == counts["sample"]
    assert counts["tables"] == 1
    names = {s.name for s in stages}
    assert "train/celebahq/constant@x0" in names and "train/celebahq/constant@v" in names
    assert "sample/ffhq/debias/1000000/ddpm1000" in names
    assert "sample/ffhq/p2/1000000/ddpm1000" not in names
    assert "sample/celebahq/constant@x0/500000/ddpm100" in names
    assert "sample/celebahq/constant@x0/500000/ddpm1000" not in names


def test_training_is_one_resuming_stage_per_checkpoint_and_runs_advance_together(tmp_path):
    stages = expand(load_plan(os.path.join(PLANS, "paper.toml"), root=str(tmp_path)))
    by_name = {s.name: s for s in stages}
    first, middle, last = (by_name[f"train/ffhq/debias{suffix}"] for suffix in ("/100000", "/500000", ""))
    flag = lambda stage, name: stage.argv[stage.argv.index(name) + 1]
    assert flag(first, "--max_steps") == "100000" and flag(middle, "--max_steps") == "500000"
    assert flag(last, "--max_steps") == "1000000"
    assert {flag(s, "--resume_checkpoint") for s in (first, middle, last)} == {"auto"}
    assert middle.deps == ["train/ffhq/debias/400000"] and first.deps == ["prepare/ffhq"]
    assert middle.outputs == [os.path.join(os.path.dirname(middle.outputs[0]), "ema_0.9999_500000.pt")]
    assert by_name["sample/ffhq/debias/100000/ddpm1000"].deps == ["train/ffhq/debias/100000"]
    # Every run's 100K checkpoint is trained and evaluated before any run trains on to 200K.
    order = [s.name for s in stages]
    assert max(order.index(f"evaluate/ffhq/{run}/100000/ddpm1000") for run in ("constant", "debias")) < min(
        order.index(f"train/ffhq/{run}/200000") for run in ("constant", "p2", "min_snr", "debias"))
    position = {name: i for i, name in enumerate(order)}
    assert all(position[dep] < position[s.name] for s in stages for dep in s.deps)


@pytest.mark.parametrize("plan", ["demo", "study"])
def test_figures_get_every_runs_last_checkpoint(plan, tmp_path):
    loaded = load_plan(os.path.join(PLANS, f"{plan}.toml"), root=str(tmp_path))
    stages = {s.name: s for s in expand(loaded)}
    figure = stages["figure/mse_step"]
    given = figure.argv[figure.argv.index("--checkpoints") + 1].split(",")
    last = max(loaded.datasets[0].iterations)
    assert [entry.split("=")[0] for entry in given] == [run.name for run in loaded.datasets[0].runs]
    assert [entry.split("=")[0] for entry in given][:4] == ["constant", "p2", "min_snr", "debias"]
    assert all(entry.endswith(f"_{last:06d}.pt") for entry in given)
    assert {f"train/embedded/{run}" for run in ("constant", "p2", "min_snr", "debias")} <= set(figure.deps)


def test_stage_commands_carry_the_right_flags(tmp_path):
    stages = {s.name: s for s in expand(load_plan(os.path.join(PLANS, "paper.toml"), root=str(tmp_path)))}
    train = stages["train/celebahq/constant@v"]
    argv = train.argv
    assert argv[:2] == ["-m", "scripts.image_train"]
    assert argv[argv.index("--weight_schedule") + 1] == "constant"
    assert argv[argv.index("--predict_v") + 1] == "True"
    assert argv[argv.index("--max_steps") + 1] == "500000"
    assert train.outputs[-1].endswith(os.path.join("celebahq", "v_constant", "ema_0.9999_500000.pt"))
    sample = stages["sample/ffhq/debias/500000/ddpm20"]
    assert sample.argv[sample.argv.index("--timestep_respacing") + 1] == "20"
    assert sample.argv[sample.argv.index("--model_path") + 1].endswith("ema_0.9999_500000.pt")
    assert sample.outputs[0].endswith("samples_50000x256x256x3.npz")
    ev = stages["evaluate/cifar10/debias/500000/ddpm1000"]
    assert "--is" in ev.argv and ev.deps == ["sample/cifar10/debias/500000/ddpm1000", "ref/cifar10"]


def test_dry_run_lists_every_stage_with_its_command(tmp_path):
    out = io.StringIO()
    counts = reproduce(os.path.join(PLANS, "table1.toml"), dry_run=True, root=str(tmp_path), stream=out)
    text = out.getvalue()
    assert counts["train"] == 16 and counts["sample"] == 4 * 6 + 3 * 4 * 4
    assert text.count("[pending] train/") == 16
    assert "mpiexec -n 8" in text
    assert re.search(r"\d+ stages: ", text)


@pytest.mark.parametrize("plan", ["table1", "table2", "table3", "table4", "paper", "demo", "gpu_mini"])
def test_shipped_plans_run_existing_entry_points_with_flags_they_accept(plan, tmp_path):
    stages = expand(load_plan(os.path.join(PLANS, f"{plan}.toml"), root=str(tmp_path)))
    parsers = {"train": image_train.parse_flags, "sample": image_sample.parse_flags}
    assert stages
    for stage in stages:
        assert stage.argv[0] == "-m" and importlib.util.find_spec(stage.argv[1]) is not None, stage.argv[:2]
        if stage.kind in parsers:
            flags = parsers[stage.kind](stage.argv[2:])
        if stage.kind == "train":
            assert flags["weight_schedule"] == stage.name.split("/")[2].split("@")[0]
        if stage.kind == "sample":
            sampler, steps = re.fullmatch(r"([a-z_]+?)(\d+)", stage.name.split("/")[-1]).groups()
            assert flags["sampler"] == sampler and sampling.sampling_steps(sampling.validate_flags(flags)) == int(steps)


def test_gpu_mini_plan_trains_four_weightings_and_evaluates_kid_against_stored_reference_features(tmp_path):
    stages = expand(load_plan(os.path.join(PLANS, "gpu_mini.toml"), root=str(tmp_path)))
    assert kinds(stages) == dict(prepare=1, ref=1, train=4, sample=20, evaluate=12, tables=1, figure=5, report=1)
    by_name = {s.name: s for s in stages}
    train = image_train.parse_flags(by_name["train/embedded/debias"].argv[2:])
    assert (train["max_steps"], train["batch_size"], train["precision"], train["resume_checkpoint"]) == (4000, 256, "bf16", "auto")
    assert train["save_interval"] == 1000 and train["image_size"] == 32 and train["num_channels"] == 64
    sample = sampling.validate_flags(image_sample.parse_flags(by_name["sample/embedded/p2/004000/ddim10"].argv[2:]))
    assert (sample["num_samples"], sample["sampler"], sample["batch_size"], sample["precision"]) == (5000, "ddim", 1250, "bf16")
    evaluate = by_name["evaluate/embedded/p2/004000/ddim100"]
    ref = str(tmp_path / "refs" / "embedded.npz")
    assert evaluate.argv[evaluate.argv.index("--ref") + 1] == ref and "--kid" in evaluate.argv
    # KID compares feature sets: the reference statistics keep the features, so no evaluation re-reads the images.
    assert "--features" in by_name["ref/embedded"].argv and "ref/embedded" in evaluate.deps
    assert by_name["prepare/embedded"].argv[-4:] == ["--image_size", "32", "--num_images", "10000"]


def test_launchers_wrap_only_distributed_stages(tmp_path):
    plan = load_plan(os.path.join(PLANS, "table4.toml"), root=str(tmp_path))
    stages = {s.name: s for s in expand(plan)}
    train, ref = stages["train/celebahq/debias"], stages["ref/celebahq"]
    assert launch.command(train, "mpiexec", 4, python="py")[1:4] == ["-n", "4", "py"]
    assert launch.command(train, "torchrun", 4, python="py")[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    # The plan's global batch (config --batch_size 1 x [plan] nproc 8) stays 8 on any rank count.
    assert launch.command(train, "local", 4, python="py") == ["py"] + train.argv + ["--batch_size", "8"]
    assert launch.command(train, "mpiexec", 4, python="py")[-2:] == ["--batch_size", "2"]
    assert launch.command(ref, "mpiexec", 4, python="py") == ["py"] + ref.argv


def test_slurm_scripts_chain_dependencies(tmp_path):
    plan = load_plan(os.path.join(PLANS, "table4.toml"), root=str(tmp_path))
    plan.slurm = {"partition": "gpu", "time": "72:00:00"}
    stages = expand(plan)
    submit = slurm.write_jobs(stages, set(runner.pending_stages(stages)), plan, str(tmp_path / "slurm"), REPO)
    text = open(submit).read()
    assert "JOB_PREPARE_CELEBAHQ=$(sbatch --parsable prepare_celebahq.sbatch)" in text
    assert "JOB_TRAIN_CELEBAHQ_DEBIAS=$(sbatch --parsable --dependency=afterok:$JOB_PREPARE_CELEBAHQ train_celebahq_debias.sbatch)" in text
    assert (
        "--dependency=afterok:$JOB_SAMPLE_CELEBAHQ_DEBIAS_500000_DDPM100:$JOB_REF_CELEBAHQ evaluate_celebahq_debias_500000_ddpm100.sbatch"
        in text
    )
    batch = (tmp_path / "slurm" / "train_celebahq_debias.sbatch").read_text()
    assert "#SBATCH --partition=gpu" in batch and "#SBATCH --time=72:00:00" in batch
    assert "#SBATCH --gpus-per-node=8" in batch
    assert "torch.distributed.run --nnodes 1 --nproc_per_node 8 --rdzv_id" in batch
    # Every job a line submits is defined before it is used.
    defined = set()
    for line in text.splitlines():
        for used in re.findall(r"\$(JOB_[A-Z0-9_]+)", line.split("=", 1)[-1]):
            assert used in defined
        m = re.match(r"(JOB_[A-Z0-9_]+)=", line)
        if m:
            defined.add(m.group(1))


def test_a_run_with_importance_sampled_timesteps_is_a_model_of_its_own(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[train]\nmax_steps=10\n[[datasets]]\nname='x'\nconfig='configs/demo.toml'\ndata_dir='d'\n"
                    "runs=['debias', 'debias+loss-weight', 'constant@x0+loss-weight']\n")
    plan = load_plan(str(path), root=str(tmp_path / "w"))
    assert [(r.name, r.dir_name) for r in plan.datasets[0].runs] == [
        ("debias", "debias"), ("debias+loss-weight", "debias+loss-weight"), ("constant@x0+loss-weight", "x0_constant+loss-weight")]
    stages = {s.name: s for s in expand(plan)}
    uniform, weighted = stages["train/x/debias"].argv, stages["train/x/debias+loss-weight"].argv
    assert "--schedule_sampler" not in uniform
    assert weighted[weighted.index("--schedule_sampler") + 1] == "loss-weight"
    assert weighted[weighted.index("--weight_schedule") + 1] == "debias"
    assert weighted[weighted.index("--log_dir") + 1].endswith(os.path.join("runs", "x", "debias+loss-weight"))


@pytest.mark.parametrize(
    "body, message",
    [
        ("[plan]\nlauncher = 'pbs'\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\n", "launcher 'pbs'"),
        ("[plan]\n", "no \\[\\[datasets\\]\\]"),
        ("[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\nruns=['heavy']\n", "run 'heavy': unknown --weight_schedule 'heavy'"),
        ("[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\nruns=['constant@z']\n", "run 'constant@z': unknown prediction target 'z'"),
        ("[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\nruns=['debias+importance']\n", "run 'debias\\+importance': unknown --schedule_sampler 'importance'"),
        ("[train]\nmax_steps=100\nsave_interval=30\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\niterations=[50]\n", "not multiples"),
        ("[[datasets]]\nname='x'\nconfig='c'\n", "give 'source'"),
        ("[extra]\n", "unknown table"),
        ("[train]\nweight_schedule='constant'\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\n", "weight_schedule is set per run"),
        ("[train]\npredict_v=true\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\n", "predict_v is set per run"),
        ("[train]\nmax_stepz=5\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\n", "max_stepz that scripts/image_train.py does not take"),
        ("[train]\np2_k=-1\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\n", "p2_k -1: out of range"),
        ("[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\nruns=['debias', 'p2', 'debias']\n", "debias listed twice"),
        ("[sample]\nnum_samples=0\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\n", "num_samples = 0; expected at least 1"),
        ("[train]\nmax_steps=10\n[sample]\nsamplers=[{sampler='ddpm', steps=[100, 2000]}]\n[[datasets]]\nname='x'\nconfig='configs/demo.toml'\ndata_dir='d'\n",
         "ddpm 2000 steps, but the diffusion of .*demo.toml has only 1000"),
    ],
)
def test_bad_plans_say_what_is_wrong(tmp_path, body, message):
    path = tmp_path / "p.toml"
    path.write_text(body)
    with pytest.raises(PlanError, match=message):
        load_plan(str(path))


def test_parallel_stages_report_their_logs_and_progress_on_a_heartbeat(tmp_path):
    """With --jobs 2 the stages' output goes to their logs; the terminal still names them and their progress."""
    plan = Plan(str(tmp_path / "p.toml"), "p", str(tmp_path), "local", 1, {}, [], {}, {})
    script = "import sys, time\nfor i in range(4):\n    sys.stderr.write(f'\\rstep {i + 1}/4'); sys.stderr.flush(); time.sleep(0.4)\n"
    stages = [Stage(f"work/{n}", "figure", ["-c", script], [str(tmp_path / n)]) for n in ("a", "b")]
    out = io.StringIO()
    outcomes = runner.run(stages, plan, jobs=2, stream=out, heartbeat=0.5)
    text = out.getvalue()
    assert [o.status for o in outcomes] == ["ran", "ran"]
    for name in ("a", "b"):
        log = os.path.join(str(tmp_path), "logs", f"work__{name}.log")
        assert f"started work/{name} (log: {log})" in text
        assert re.search(rf"running work/{name} \(\d+s\): step [1-4]/4", text), text
    assert runner.last_progress(os.path.join(str(tmp_path), "logs", "work__a.log")).startswith("# finished in")
