"""The census's third part: plans checked whole by --dry-run, runs that end unhealthy, inputs that
once ended in a traceback, and command lines that once got a page of argparse usage.

`tests.bad_inputs.all_cases()` joins these to the others, for tests/test_bad_inputs.py and the census.
"""

import json

import numpy as np

from tests.bad_inputs import REPO, BadInput, sampling_argv, training_argv

CASES = []
TRAIN, SAMPLE, FID, REF_STATS, PREPARE, REPRODUCE, TABLES = (
    "scripts.image_train", "scripts.image_sample", "evaluations.fid", "evaluations.ref_stats", "datasets.prepare",
    "scripts.reproduce", "evaluations.tables",
)


def case(module, may_leave=()):
    def register(build):
        CASES.append(BadInput(build.__name__, module, build, False, may_leave))
        return build

    return register


# ---- plans: every mistake is found by --dry-run -------------------------------------------------------

# A plan that --dry-run passes as written: each case changes one line of it.
GOOD_PLAN = """\
[plan]
name = "census"
launcher = "local"

[prepare]
image_size = 16
num_images = 8

[train]
max_steps = 4
save_interval = 2
num_workers = 0

[sample]
num_samples = 4
batch_size = 2
samplers = [{ sampler = "ddim", steps = [2] }]

[evaluate]
bootstrap = 5
ref_flags = { num_images = 8 }

[slurm]
partition = "gpu"

[[datasets]]
name = "embedded"
config = "configs/demo.toml"
runs = ["debias"]
iterations = [4]

[figures.weight_curves]
script = "weight_curves"
normalize = "mean"

[report]
out = "report"
"""


def plan_case(name, old, new, culprits):
    def build(m, d, hold):
        assert old in GOOD_PLAN, old
        plan = d / "plan.toml"
        plan.write_text(GOOD_PLAN.replace(old, new, 1))
        return [str(plan), "--dry-run", "--root", str(d / "root")], [str(plan), *culprits]

    CASES.append(BadInput(f"plan_{name}", REPRODUCE, build))


plan_case("misspelled_key_in_plan", 'launcher = "local"', 'launchr = "local"', ["[plan]", "launchr"])
plan_case("misspelled_key_in_prepare", "num_images = 8", "num_imgs = 8", ["[prepare]", "num_imgs"])
plan_case("misspelled_key_in_sample", "num_samples = 4", "num_sampels = 4", ["[sample]", "num_sampels"])
plan_case("misspelled_key_in_evaluate", "bootstrap = 5", "bootstrp = 5", ["[evaluate]", "bootstrp"])
plan_case("misspelled_key_in_ref_flags", "ref_flags = { num_images = 8 }", "ref_flags = { num_imgs = 8 }",
          ["ref_flags", "num_imgs"])
plan_case("unknown_metric_in_evaluate", "bootstrap = 5", 'metrics = ["fdi"]', ["[evaluate]", "fdi"])
plan_case("misspelled_key_in_slurm", 'partition = "gpu"', 'partion = "gpu"', ["[slurm]", "partion"])
plan_case("misspelled_key_in_a_figure", 'normalize = "mean"', 'normalise = "mean"', ["[figures.weight_curves]", "normalise"])
plan_case("unknown_figure_script", 'script = "weight_curves"', 'script = "weight_curve"', ["[figures.weight_curves]", "weight_curve"])
plan_case("misspelled_key_in_report", 'out = "report"', 'outt = "report"', ["[report]", "outt"])
plan_case("misspelled_key_in_a_dataset_entry", 'runs = ["debias"]', 'runz = ["debias"]', ["datasets[0]", "runz"])
plan_case("misspelled_key_in_a_dataset_sample_table", 'iterations = [4]', 'iterations = [4]\nsample = { num_sampels = 4 }',
          ["datasets[0]", "[sample]", "num_sampels"])
plan_case("unknown_dataset", 'name = "embedded"', 'name = "ffhqq"\nsource = "ffhq.zip"', ["datasets[0]", "ffhqq"])
plan_case("sample_flag_of_the_wrong_type", "num_samples = 4", 'num_samples = "four"', ["[sample]", "num_samples", "four"])
plan_case("figure_flag_of_the_wrong_type", 'normalize = "mean"', 'normalize = "mean"\ndiffusion_steps = "many"',
          ["[figures.weight_curves]", "diffusion_steps", "many"])


# ---- runs that end unhealthy --------------------------------------------------------------------------


def mark_unhealthy(manifest, reason="9 of 10 updates since step 2 were skipped for a non-finite loss or gradient"):
    record = json.loads(manifest.read_text())
    record["health"] = dict(record.get("health") or {}, healthy=False, reason=reason)
    manifest.write_text(json.dumps(record))


@case(SAMPLE)
def sample_from_an_unhealthy_checkpoint(m, d, hold):
    run = m.run_copy(d)
    mark_unhealthy(run / "checkpoint000004.json")
    argv = sampling_argv(run / "ema_0.9999_000004.pt", d / "out")
    return argv, [str(run / "checkpoint000004.json"), "unhealthy", "--allow_unhealthy"]


# ---- inputs that ended in a traceback -----------------------------------------------------------------


@case(FID)
def fid_samples_hold_zero_images(m, d, hold):
    from tests.bad_inputs_more import fid_argv

    empty = d / "empty.npz"
    np.savez(empty, arr_0=np.zeros((0, 8, 8, 3), np.uint8))
    return fid_argv(d, samples=empty, ref=m.stats), [str(empty), "no images"]


@case(REF_STATS)
def ref_stats_input_holds_zero_images(m, d, hold):
    empty = d / "empty.npz"
    np.savez(empty, arr_0=np.zeros((0, 8, 8, 3), np.uint8))
    return [str(empty), str(d / "ref.npz"), "--cache_dir", ""], [str(empty), "no images"]


@case(FID)
def fid_samples_are_not_images(m, d, hold):
    from tests.bad_inputs_more import fid_argv

    flat = d / "flat.npz"
    np.savez(flat, arr_0=np.zeros((4, 8), np.float32))
    return fid_argv(d, samples=flat, ref=m.stats), [str(flat), "(4, 8)"]


@case(SAMPLE)
def sample_model_path_is_a_json_file(m, d, hold):
    return sampling_argv(m.run / "checkpoint000004.json", d / "out"), [str(m.run / "checkpoint000004.json"), "not a readable PyTorch file"]


# ---- command lines: one line, never a page of usage ---------------------------------------------------


@case(SAMPLE)
def sample_removed_flag_sampling_steps(m, d, hold):
    return sampling_argv(m.model, d / "out", "--sampling_steps", 10), ["--sampling_steps", "--timestep_respacing"]


@case(TRAIN)
def train_negative_value_in_scientific_notation(m, d, hold):
    argv = training_argv(m.data, d / "run", "--weight_schedule", "p2", "--p2_gamma", "-1e-3")
    return argv, ["--p2_gamma -0.001", "p2_gamma >= 0"]


@case(TRAIN)
def train_unknown_flag(m, d, hold):
    return training_argv(m.data, d / "run", "--learning_rate", "1e-4"), ["--learning_rate", "--help"]


@case(TRAIN)
def train_value_of_the_wrong_type(m, d, hold):
    return training_argv(m.data, d / "run", "--batch_size", "two"), ["--batch_size", "two"]


@case(PREPARE)
def prepare_unknown_flag(m, d, hold):
    return ["embedded", str(d / "prepared"), "--num_imgs", "8"], ["--num_imgs", "--help"]


@case(PREPARE)
def prepare_without_paths(m, d, hold):
    return ["embedded"], ["path", "--help"]


@case(FID)
def fid_unknown_flag(m, d, hold):
    from tests.bad_inputs_more import fid_argv

    return fid_argv(d, "--bootstrp", "5", samples=m.samples, ref=m.stats), ["--bootstrp", "--help"]


@case(TABLES)
def tables_value_of_the_wrong_type(m, d, hold):
    return ["--results", str(d / "r.jsonl"), "--out_dir", str(d / "t"), "--iterations", "x"], ["--iterations", "x"]


@case(REPRODUCE)
def reproduce_jobs_is_zero(m, d, hold):
    return [str(REPO / "configs" / "plans" / "demo.toml"), "--dry-run", "--jobs", "0"], ["--jobs", "0"]


# ---- values outside their range: the flag and its range, never a library's message ----------------------


@case(TRAIN)
def train_lr_negative_in_scientific_notation(m, d, hold):
    return training_argv(m.data, d / "run", "--lr", "-1e-3"), ["--lr -0.001", "above 0"]


@case(TRAIN)
def train_lr_is_zero(m, d, hold):
    return training_argv(m.data, d / "run", "--lr", "0"), ["--lr 0.0", "above 0"]


@case(TRAIN)
def train_weight_decay_negative(m, d, hold):
    return training_argv(m.data, d / "run", "--weight_decay", "-1"), ["--weight_decay -1.0", "0 or above"]


@case(TRAIN)
def train_dropout_above_one(m, d, hold):
    return training_argv(m.data, d / "run", "--dropout", "1.5"), ["--dropout 1.5", "[0, 1)"]


@case(TRAIN)
def train_seed_negative(m, d, hold):
    return training_argv(m.data, d / "run", "--seed", "-1"), ["--seed -1", "from 0"]


@case(TRAIN)
def train_num_workers_negative(m, d, hold):
    return training_argv(m.data, d / "run", "--num_workers", "-1"), ["--num_workers -1", "0"]


@case(TRAIN)
def train_microbatch_below_adms_off_value(m, d, hold):
    return training_argv(m.data, d / "run", "--microbatch", "-2"), ["--microbatch -2", "-1 or 0"]


@case(SAMPLE)
def sample_ddim_eta_negative(m, d, hold):
    return sampling_argv(m.model, d / "out", "--sampler", "ddim", "--eta", "-1"), ["--eta -1.0", "from 0"]


@case(SAMPLE)
def sample_dropout_above_one(m, d, hold):
    return sampling_argv(m.model, d / "out", "--dropout", "2"), ["--dropout 2.0", "[0, 1)"]


@case(FID)
def fid_iterations_negative(m, d, hold):
    from tests.bad_inputs_more import fid_argv

    return fid_argv(d, "--iterations", "-5", samples=m.samples, ref=m.stats), ["--iterations -5", "0 or more"]


@case(FID)
def fid_train_seed_negative(m, d, hold):
    from tests.bad_inputs_more import fid_argv

    return fid_argv(d, "--train_seed", "-1", samples=m.samples, ref=m.stats), ["--train_seed -1", "0 or more"]


@case(FID)
def fid_steps_zero(m, d, hold):
    from tests.bad_inputs_more import fid_argv

    return fid_argv(d, "--steps", "0", samples=m.samples, ref=m.stats), ["--steps 0", "1 or more"]


# ---- a run refused at set-up leaves no log dir ---------------------------------------------------------


@case(TRAIN)
def train_data_dir_without_images_leaves_no_log_dir(m, d, hold):
    (d / "empty").mkdir()
    return training_argv(d / "empty", d / "run"), ["contains no images"]
