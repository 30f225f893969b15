"""Plans expand into the expected stages; launchers and Slurm scripts are right as text."""

import importlib.util
import io
import os
import re

import pytest

from guided_diffusion import sampling
from pipeline import PlanError, expand, load_plan, reproduce
from scripts import image_sample, image_train
from pipeline import launch, report, runner

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
    stages = expand(load_plan(os.path.join(PLANS, "paper.toml"), root=str(tmp_path)))
    counts = kinds(stages)
    assert counts["prepare"] == 6 and counts["ref"] == 6
    # 6 datasets x 4 weightings, plus the x0 and v targets of Table 4.
    assert counts["train"] == 6 * 4 + 2
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


def test_gpu_mini_plan_trains_four_weightings_and_evaluates_kid_against_the_images(tmp_path):
    stages = expand(load_plan(os.path.join(PLANS, "gpu_mini.toml"), root=str(tmp_path)))
    assert kinds(stages) == dict(prepare=1, train=4, sample=12, evaluate=12, tables=1, figure=5, report=1)
    by_name = {s.name: s for s in stages}
    train = image_train.parse_flags(by_name["train/embedded/debias"].argv[2:])
    assert (train["max_steps"], train["batch_size"], train["precision"], train["resume_checkpoint"]) == (4000, 256, "bf16", "auto")
    assert train["save_interval"] == 1000 and train["image_size"] == 32 and train["num_channels"] == 64
    sample = sampling.validate_flags(image_sample.parse_flags(by_name["sample/embedded/p2/004000/ddim10"].argv[2:]))
    assert (sample["num_samples"], sample["sampler"], sample["batch_size"], sample["precision"]) == (5000, "ddim", 1250, "bf16")
    evaluate = by_name["evaluate/embedded/p2/004000/ddim100"]
    data_dir = str(tmp_path / "data" / "embedded")
    assert evaluate.argv[evaluate.argv.index("--ref") + 1] == data_dir and "--kid" in evaluate.argv
    # The reference is the prepared images, so no statistics stage and the evaluation waits for the data.
    assert "ref/embedded" not in by_name and "prepare/embedded" in evaluate.deps
    assert by_name["prepare/embedded"].argv[-4:] == ["--image_size", "32", "--num_images", "10000"]


def test_report_tables_show_fid_and_kid_per_sampler_and_weighting():
    results = [
        dict(dataset="d", weight_schedule=w, pred="eps", iterations=10, sampler="ddim", steps=t, fid=f, kid=k)
        for w, t, f, k in [("constant", 10, 30.0, 0.0214), ("debias", 10, 25.0, 0.0186), ("constant", 25, 20.0, 0.0100)]
    ]
    fid, _ = report.fid_table(results, "d", ["constant", "debias"])
    kid, _ = report.fid_table(results, "d", ["constant", "debias"], metric="kid", scale=1e3, digits=2)
    assert fid.splitlines()[2:] == ["| ddim | 25 | **20.0** | — |", "| ddim | 10 | 30.0 | **25.0** |"]
    assert kid.splitlines()[2:] == ["| ddim | 25 | **10.00** | — |", "| ddim | 10 | 21.40 | **18.60** |"]


def test_launchers_wrap_only_distributed_stages(tmp_path):
    plan = load_plan(os.path.join(PLANS, "table4.toml"), root=str(tmp_path))
    stages = {s.name: s for s in expand(plan)}
    train, ref = stages["train/celebahq/debias"], stages["ref/celebahq"]
    assert launch.command(train, "mpiexec", 4, python="py")[1:4] == ["-n", "4", "py"]
    assert launch.command(train, "torchrun", 4, python="py")[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    assert launch.command(train, "local", 4, python="py") == ["py"] + train.argv
    assert launch.command(ref, "mpiexec", 4, python="py") == ["py"] + ref.argv


def test_slurm_scripts_chain_dependencies(tmp_path):
    plan = load_plan(os.path.join(PLANS, "table4.toml"), root=str(tmp_path))
    plan.slurm = {"partition": "gpu", "time": "72:00:00"}
    stages = expand(plan)
    submit = launch.write_slurm_scripts(stages, set(runner.pending_stages(stages)), plan, str(tmp_path / "slurm"), REPO)
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
    assert "torch.distributed.run --standalone --nproc_per_node 8 -m scripts.image_train" in batch
    # Every job a line submits is defined before it is used.
    defined = set()
    for line in text.splitlines():
        for used in re.findall(r"\$(JOB_[A-Z0-9_]+)", line.split("=", 1)[-1]):
            assert used in defined
        m = re.match(r"(JOB_[A-Z0-9_]+)=", line)
        if m:
            defined.add(m.group(1))


@pytest.mark.parametrize(
    "body, message",
    [
        ("[plan]\nlauncher = 'pbs'\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\n", "launcher 'pbs'"),
        ("[plan]\n", "no \\[\\[datasets\\]\\]"),
        ("[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\nruns=['heavy']\n", "run 'heavy': unknown --weight_schedule 'heavy'"),
        ("[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\nruns=['constant@z']\n", "run 'constant@z': unknown prediction target 'z'"),
        ("[train]\nmax_steps=100\nsave_interval=30\n[[datasets]]\nname='x'\nconfig='c'\ndata_dir='d'\niterations=[50]\n", "not multiples"),
        ("[[datasets]]\nname='x'\nconfig='c'\n", "give 'source'"),
        ("[extra]\n", "unknown table"),
    ],
)
def test_bad_plans_say_what_is_wrong(tmp_path, body, message):
    path = tmp_path / "p.toml"
    path.write_text(body)
    with pytest.raises(PlanError, match=message):
        load_plan(str(path))
