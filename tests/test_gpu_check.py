"""scripts/benchmarks/gpu_check.py end to end at tiny size on the CPU (so that it cannot rot between GPU
draws), and its time budget: a step whose budget is gone is recorded as skipped, a failing step does
not stop the next. Time is moved by a fake clock, never waited for (except the row timer, 0.3 s)."""

import json
import os
import re
import sys
import time

import numpy as np
import pytest

from scripts.benchmarks import gpu_check, gpu_check_steps
from scripts.benchmarks.gpu_check_base import (
    RETURNED_FILES_MAX,
    SHIM_DIR,
    Deadline,
    StepRunner,
    find_adm_dir,
    returned_file_problems,
)

RESULT_FILES = ("steps.json", "FID_README.txt")
WEIGHTINGS = ("constant", "p2", "min_snr", "debias")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def parse(path):
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return path.read_text()


def results(out):
    return {r["step"]: r.get("result") for r in parse(out / "steps.json")}


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
    assert results(out)["prereqs"]["missing"] == []


def test_tiny_run_brings_everything_back_in_at_most_8_files_two_folders_deep(tiny_run):
    out, _ = tiny_run
    files = [os.path.relpath(os.path.join(root, name), out) for root, _, names in os.walk(out) for name in names]
    assert len(files) <= RETURNED_FILES_MAX == 8, files
    assert max(path.count(os.sep) for path in files) <= 2
    assert returned_file_problems(out) == []


def test_more_files_than_come_back_or_nesting_too_deep_is_named(tmp_path):
    for i in range(9):
        (tmp_path / f"f{i}.json").write_text("{}")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.npz").write_bytes(b"")
    problems = returned_file_problems(tmp_path)
    assert problems[0] == f"a{os.sep}b{os.sep}c{os.sep}deep.npz is more than 2 folders deep"
    assert problems[1].startswith("10 files, at most 8 come back: ")


def test_tiny_run_collects_the_cuda_tests_without_torch_fidelity_and_blobfile(tiny_run):
    out, _ = tiny_run
    collected = results(out)["cuda_tests"]
    assert collected["status"] == "collected only (no CUDA): passed", collected["tail"]
    assert "torch_fidelity,blobfile" in collected["command"] and "--collect-only" in collected["command"]
    source = open(os.path.join(os.path.dirname(__file__), "test_cuda.py")).read()
    # Every test function in test_cuda.py (parametrized ones count once per case) is collected.
    assert collected["counts"]["collected"] >= len(re.findall(r"^def test_", source, re.M)) >= 15


def test_a_failing_step_makes_the_exit_status_non_zero_with_one_line_naming_it(tmp_path, monkeypatch, capsys):
    # Hiding torch itself makes the CUDA tests' collection fail, as a missing module on the GPU machine would.
    monkeypatch.setattr(gpu_check_steps, "GPU_MACHINE_LACKS", ("torch_fidelity", "blobfile", "torch"))
    code = gpu_check.main(["--tiny", "--out", str(tmp_path), "--budgets", "train=0,sample=0,mini=0"])
    error = capsys.readouterr().err.strip()
    assert code == 1
    assert len(error.splitlines()) == 1 and error.startswith("gpu_check: failed: cuda_tests (pytest -m cuda collected")
    step = {r["step"]: r for r in parse(tmp_path / "steps.json")}["cuda_tests"]
    assert step["status"] == "failed" and "No module named 'torch'" in step["result"]["tail"]


def test_a_row_that_outlives_the_deadline_is_cut_off_by_the_timer():
    # A compile is one call: only a timer, not a check between rows, can stop it at the deadline.
    deadline = Deadline(time.monotonic() + 0.3, time.monotonic)
    start = time.monotonic()
    rows = gpu_check_steps._timed_row(deadline, 0.0, lambda: time.sleep(5) or dict(images_per_s=1.0), "train compiled")
    assert time.monotonic() - start < 2.0
    assert rows == [dict(label="train compiled", status="timed out: did not finish within 0 s")]
    assert gpu_check_steps._timed_row(deadline, 0.0, lambda: dict(images_per_s=1.0), "late")[0]["status"].startswith(
        "skipped")


def test_adm_checkout_is_found_where_a_run_command_carries_it(tmp_path):
    assert find_adm_dir(str(tmp_path), {}) == str(tmp_path / "third_party" / "guided-diffusion")
    carried = tmp_path / "shared" / "guided-diffusion" / "guided_diffusion"
    carried.mkdir(parents=True)
    (carried / "train_util.py").write_text("")
    assert find_adm_dir(str(tmp_path), {}) == str(carried.parent)
    assert find_adm_dir(str(tmp_path), {"DEBIAS_ADM_GUIDED_DIFFUSION": "elsewhere"}) == os.path.abspath("elsewhere")


def test_cuda_test_children_keep_the_blobfile_stand_in(monkeypatch):
    from tests import test_cuda

    monkeypatch.setattr(sys, "path", [SHIM_DIR] + sys.path)
    monkeypatch.setenv("PYTHONPATH", "/some/where")
    paths = test_cuda.child_env(OMP_NUM_THREADS="1")["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(test_cuda.REPO), SHIM_DIR, "/some/where"]


def test_the_inception_url_named_without_torch_fidelity_is_its_own():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from evaluations import inception

    assert inception.URL_INCEPTION_V3 == URL_INCEPTION_V3


def test_tiny_run_returns_one_npz_per_weighting_with_the_same_iterations(tiny_run):
    out, _ = tiny_run
    mini = results(out)["mini"]
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


def test_speed_rows_are_in_steps_json(tiny_run):
    out, _ = tiny_run
    train, sample = results(out)["train"], results(out)["sample"]
    assert [r["status"] for r in train["ours"]] == ["ok"] and train["ours"][0]["images_per_s"] > 0
    assert sorted(r["label"].split()[0] for r in sample["ours"]) == ["DDIM-50", "DDPM-100"]


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
