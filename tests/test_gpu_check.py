"""scripts/benchmarks/gpu_check.py end to end at tiny size on the CPU (so that it cannot rot between GPU
draws), and its time budget: a step whose budget is gone is recorded as skipped, a failing step does
not stop the next. Time is moved by a fake clock, never waited for."""

import csv
import json

import numpy as np
import pytest

from scripts.benchmarks import gpu_check
from scripts.benchmarks.gpu_check_base import StepRunner

RESULT_FILES = ("prereqs.json", "steps.json", "cuda_tests.json", "train_speed.json", "train_speed.csv",
                "sample_speed.json", "sample_speed.csv", "mini/mini.json", "FID_README.txt")
WEIGHTINGS = ("constant", "p2", "min_snr", "debias")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def parse(path):
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".csv":
        return list(csv.DictReader(path.open()))
    return path.read_text()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    code = gpu_check.main(["--tiny", "--out", str(out)])
    return out, code


def test_tiny_run_writes_every_result_file(tiny_run):
    out, code = tiny_run
    assert code == 0
    for name in RESULT_FILES:
        assert parse(out / name), name
    steps = {r["step"]: r for r in parse(out / "steps.json")}
    assert list(steps) == ["prereqs", "cuda_tests", "train", "sample", "mini"]
    assert all(r["status"] == "ok" for r in steps.values()), steps
    assert parse(out / "prereqs.json")["missing"] == []


def test_tiny_run_records_skipped_cuda_tests_and_speed_rows(tiny_run):
    out, _ = tiny_run
    assert parse(out / "cuda_tests.json")["status"] == "skipped: no CUDA"
    train = parse(out / "train_speed.json")
    assert [r["status"] for r in train["ours"]] == ["ok"] and train["ours"][0]["images_per_s"] > 0
    sample = parse(out / "sample_speed.json")
    assert sorted(r["label"].split()[0] for r in sample["ours"]) == ["DDIM-50", "DDPM-100"]


def test_tiny_run_returns_one_npz_per_weighting_with_the_same_iterations(tiny_run):
    out, _ = tiny_run
    mini = parse(out / "mini/mini.json")
    assert set(mini["runs"]) == set(WEIGHTINGS)
    assert {run["iterations"] for run in mini["runs"].values()} == {mini["iterations"]}
    readme = parse(out / "FID_README.txt")
    for weighting, run in mini["runs"].items():
        images = np.load(out / run["npz"])["arr_0"]
        assert images.shape == (mini["num_samples"], 8, 8, 3) and images.dtype == np.uint8
        assert f"--samples $RESULTS/{run['npz']}" in readme and f"--weight_schedule {weighting}" in readme
    assert "python -m evaluations.fid" in readme and "--kid" in readme


def test_a_zero_budget_skips_its_step_and_the_rest_still_run(tmp_path):
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--budgets", "train=0,sample=0"]) == 0
    steps = {r["step"]: r for r in parse(tmp_path / "steps.json")}
    assert steps["train"]["status"] == steps["sample"]["status"] == "skipped"
    assert "budget exhausted" in steps["train"]["reason"]
    assert steps["mini"]["status"] == "ok" and (tmp_path / "FID_README.txt").exists()


def test_steps_past_the_whole_budget_are_skipped_and_failures_recorded(tmp_path):
    clock = FakeClock()
    runner = StepRunner(str(tmp_path), total_s=100, clock=clock)
    seen = []

    def slow(deadline):
        seen.append(deadline.remaining())
        clock.now += 70
        return "done"

    def broken(deadline):
        seen.append(deadline.remaining())
        clock.now += 5
        raise RuntimeError("compile failed")

    assert runner.run("first", 80, slow)["status"] == "ok"
    failed = runner.run("second", 50, broken)
    assert failed["status"] == "failed" and "compile failed" in failed["error"]
    assert seen == [80, 30]  # the second step gets what the run has left, not its own 50 s
    clock.now = 100
    assert runner.run("third", 50, slow)["status"] == "skipped"
    assert seen == [80, 30]
    assert [r["status"] for r in parse(tmp_path / "steps.json")] == ["ok", "failed", "skipped"]


def test_a_missing_hard_prerequisite_aborts_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.base, "HARD_MODULES", ("torch", "no_such_module_for_gpu_check"))
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 3
    error = capsys.readouterr().err.strip()
    assert error.startswith("gpu_check: missing hard prerequisite: module no_such_module_for_gpu_check")
    assert len(error.splitlines()) == 1
    assert [r["step"] for r in parse(tmp_path / "steps.json")] == ["prereqs"]


def test_unknown_step_in_budgets_is_an_error(tmp_path, capsys):
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--budgets", "warp=3"]) == 2
    assert "no step 'warp'" in capsys.readouterr().err


def test_blobfile_shim_covers_the_local_calls_the_project_makes(tmp_path):
    import importlib.util

    from scripts.benchmarks.gpu_check_base import SHIM_DIR

    spec = importlib.util.spec_from_file_location("blobfile_shim", f"{SHIM_DIR}/blobfile/__init__.py")
    bf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bf)
    folder = bf.join(str(tmp_path), "a")
    bf.makedirs(folder)
    bf.makedirs(folder)
    with bf.BlobFile(bf.join(folder, "x.txt"), "w") as f:
        f.write("hi")
    bf.copy(bf.join(folder, "x.txt"), bf.join(folder, "y.txt"))
    with pytest.raises(FileExistsError):
        bf.copy(bf.join(folder, "x.txt"), bf.join(folder, "y.txt"))
    assert bf.listdir(folder) == ["x.txt", "y.txt"] and bf.stat(bf.join(folder, "y.txt")).size == 2
    assert bf.isdir(folder) and bf.exists(bf.join(folder, "x.txt")) and bf.basename(folder) == "a"
    bf.remove(bf.join(folder, "x.txt"))
    assert not bf.exists(bf.join(folder, "x.txt")) and bf.dirname(folder) == str(tmp_path)
    with pytest.raises(ValueError, match="local paths only"):
        bf.exists("gs://bucket/file")
