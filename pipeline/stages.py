"""Expanding a plan into stages: prepare -> reference statistics -> train -> sample -> evaluate -> tables, figures.

A stage is a command, the files it produces and the stages it needs. It is
done when all its outputs exist and none is older than an output of a stage it
depends on, as make decides; there is no other record that could drift.
"""

import dataclasses
import os

from guided_diffusion.run.checkpoint import ema_filename
from guided_diffusion.resample import UNIFORM
from guided_diffusion.run.sample_store import samples_file_name
from guided_diffusion.script_util import load_config, model_and_diffusion_defaults
from guided_diffusion.targets import target_flags
from guided_diffusion.train_util import image_train_defaults
from guided_diffusion.weighting import parameter_owners

from .plan import DEFAULT_SEED

# Every stage runs an entry point by module (`python -m ...`), whatever the working directory.
MODULES = {
    "prepare": "datasets.prepare",
    "ref": "evaluations.ref_stats",
    "train": "scripts.image_train",
    "sample": "scripts.image_sample",
    "evaluate": "evaluations.fid",
    "tables": "evaluations.tables",
    "report": "scripts.make_report",
}
FIGURE_PACKAGE = "scripts.analysis"


def _module(kind):
    return ["-m", MODULES[kind]]


@dataclasses.dataclass
class Stage:
    name: str
    kind: str
    argv: list  # the program's arguments after the interpreter, e.g. ["-m", "scripts.image_train", "--lr", ...]
    outputs: list
    deps: list = dataclasses.field(default_factory=list)
    distributed: bool = False  # launched through the plan's launcher (several processes)
    log: str = ""
    # Training: images per step over all ranks; the launcher sets --batch_size to it over its rank count.
    global_batch: int | None = None
    # The position of the checkpoint a train, sample or evaluate stage serves (None: before or after all).
    segment: int | None = None

    def newest_input_mtime(self, stages_by_name):
        times = [
            os.path.getmtime(out)
            for dep in self.deps
            for out in stages_by_name[dep].outputs
            if os.path.exists(out)
        ]
        return max(times, default=0.0)

    def is_done(self, stages_by_name):
        if not self.outputs or not all(os.path.exists(p) for p in self.outputs):
            return False
        oldest_output = min(os.path.getmtime(p) for p in self.outputs)
        return oldest_output >= self.newest_input_mtime(stages_by_name)


def _flags(mapping):
    argv = []
    for key, value in mapping.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv += [f"--{key}", str(value)]
    return argv


def _ema_checkpoint(run_dir, step, rate):
    return os.path.join(run_dir, ema_filename(rate, step))


def _train_setting(ds, key):
    """A training flag of the dataset's runs: the plan's [train], else the dataset config's, else the default."""
    if key in ds.train:
        return ds.train[key]
    config = load_config(ds.config, image_train_defaults(), sections=("model", "diffusion", "train"))
    return config.get(key, image_train_defaults()[key])


def _ema_rate(ds):
    """The first EMA rate the training runs use: samples come from that EMA, as in the paper."""
    return str(_train_setting(ds, "ema_rate")).split(",")[0].strip()


def expand(plan):
    """All stages of a plan in dependency order."""
    stages = []
    results = plan.under_root("results", "results.jsonl")
    evaluate_names = []
    index = {}
    for ds in plan.datasets:
        prepare_name = None
        if ds.source is not None or ds.name == "embedded":
            prepare_name = f"prepare/{ds.name}"
            paths = [ds.data_dir] if ds.source is None else [ds.source, ds.data_dir]
            dataset_kind = ds.prepare_args.get("dataset", ds.name)
            prep_flags = {k: v for k, v in ds.prepare_args.items() if k != "dataset"}
            stages.append(
                Stage(
                    name=prepare_name,
                    kind="prepare",
                    argv=_module("prepare") + [dataset_kind] + paths + _flags(prep_flags),
                    outputs=[os.path.join(ds.data_dir, "manifest.json")],
                )
            )
        data_deps = [prepare_name] if prepare_name else []

        ref = ds.ref or plan.under_root("refs", f"{ds.name}.npz")
        ref_deps = []
        ref_flags = dict(ds.evaluate.get("ref_flags", {}))
        if any(m in ("kid", "prc") for m in ds.evaluate.get("metrics", [])):
            # KID and precision/recall compare feature sets: the reference keeps its features.
            ref_flags.setdefault("features", True)
        if not ds.ref:
            stages.append(
                Stage(
                    name=f"ref/{ds.name}",
                    kind="ref",
                    argv=_module("ref") + [ds.data_dir, ref] + _flags(ref_flags),
                    outputs=[ref],
                    deps=list(data_deps),
                )
            )
            ref_deps = [f"ref/{ds.name}"]

        ema_rate = _ema_rate(ds)
        # The plan's --batch_size is per rank for [plan] nproc ranks (the paper's 1 x 8 = 8).
        global_batch = int(_train_setting(ds, "batch_size")) * plan.nproc
        entry = index[ds.name] = {
            "config": ds.config,
            "data_dir": ds.data_dir,
            "prepare": list(data_deps),
            "train": {},
            "samples": [],
            "evaluations": [],
        }
        for run in ds.runs:
            run_dir = plan.under_root("runs", ds.name, run.dir_name)
            train_name = f"train/{ds.name}/{run.name}"
            # A plan's [train] table serves every run; each run gets only its own schedule's parameters.
            owners = parameter_owners()
            train_flags = {k: v for k, v in ds.train.items() if run.weight_schedule in owners.get(k, [run.weight_schedule])}
            train_flags.update(target_flags(run.target))
            if run.schedule_sampler != UNIFORM:
                train_flags["schedule_sampler"] = run.schedule_sampler
            if run.seed != DEFAULT_SEED:
                train_flags["seed"] = run.seed
            # Training is one stage per checkpoint that is sampled, each resuming the one before, so
            # that the early checkpoints are sampled and evaluated while training goes on.
            train_names = {}
            checkpoints = sorted(ds.iterations)
            for position, it in enumerate(checkpoints):
                last = position == len(checkpoints) - 1
                segment_flags = dict(train_flags) if last else {**train_flags, "max_steps": it}
                train_names[it] = train_name if last else f"{train_name}/{it:06d}"
                stages.append(
                    Stage(
                        name=train_names[it],
                        kind="train",
                        argv=_module("train")
                        + ["--config", ds.config, "--data_dir", ds.data_dir, "--log_dir", run_dir]
                        + ["--weight_schedule", run.weight_schedule, "--resume_checkpoint", "auto"]
                        + _flags(segment_flags),
                        outputs=[_ema_checkpoint(run_dir, it, ema_rate)],
                        deps=list(data_deps) if position == 0 else [train_names[checkpoints[position - 1]]],
                        distributed=True,
                        global_batch=global_batch,
                        segment=position,
                    )
                )
            entry["train"][run.name] = (train_name, _ema_checkpoint(run_dir, checkpoints[-1], ema_rate))
            for it in ds.iterations:
                for setting in ds.samplers:
                    if not setting.applies_to(it, run):
                        continue
                    cell = f"{ds.name}/{run.name}/{it:06d}/{setting.name}"
                    sample_dir = plan.under_root("samples", ds.name, run.dir_name, f"{it:06d}", setting.name)
                    num = int(ds.sample.get("num_samples", 50000))
                    size = _image_size(ds)
                    npz = os.path.join(sample_dir, samples_file_name((num, size, size, 3)))
                    sample_flags = {**ds.sample, **setting.flags(), **target_flags(run.target)}
                    stages.append(
                        Stage(
                            name=f"sample/{cell}",
                            kind="sample",
                            argv=_module("sample")
                            + ["--config", ds.config, "--model_path", _ema_checkpoint(run_dir, it, ema_rate)]
                            + ["--out_dir", sample_dir]
                            + _flags(sample_flags),
                            outputs=[npz],
                            deps=[train_names[it]],
                            distributed=True,
                            segment=checkpoints.index(it),
                        )
                    )
                    if it == max(ds.iterations):
                        entry["samples"].append((run.name, setting.steps, npz, f"sample/{cell}", setting.sampler))
                    if not setting.evaluate:
                        continue
                    metrics = os.path.join(sample_dir, "metrics.json")
                    eval_flags = {k: v for k, v in ds.evaluate.items() if k not in ("ref_flags", "metrics")}
                    extra = [f"--{m}" for m in ds.evaluate.get("metrics", [])]
                    stages.append(
                        Stage(
                            name=f"evaluate/{cell}",
                            kind="evaluate",
                            argv=_module("evaluate")
                            + ["--ref", ref, "--samples", npz, "--results", results, "--metrics_out", metrics]
                            + ["--dataset", ds.name]
                            + extra
                            + _flags(eval_flags),
                            outputs=[metrics],
                            deps=[f"sample/{cell}"] + ref_deps,
                            segment=checkpoints.index(it),
                        )
                    )
                    evaluate_names.append(f"evaluate/{cell}")
                    entry["evaluations"].append(f"evaluate/{cell}")

    tables_dir = plan.under_root("results", "tables")
    stages.append(
        Stage(
            name="tables",
            kind="tables",
            argv=_module("tables") + ["--results", results, "--out_dir", tables_dir],
            outputs=[os.path.join(tables_dir, f"table{i}.md") for i in (1, 2, 3, 4)],
            deps=evaluate_names,
        )
    )
    figures = _figure_stages(plan, index, results)
    stages.extend(figures)
    if plan.report:
        out = plan.report.get("out", plan.under_root("report"))
        stages.append(
            Stage(
                name="report",
                kind="report",
                argv=_module("report") + [plan.path, "--root", plan.root, "--out", out],
                outputs=[os.path.join(out, "README.md")],
                deps=["tables"] + [f.name for f in figures],
            )
        )
    return _checkpoint_by_checkpoint(stages)


def _checkpoint_by_checkpoint(stages):
    """Stages in the order a runner should start them: every run's first checkpoint before any run's second.

    The runner starts the first ready stage in this order, so all weightings advance together
    and a curve over training iterations fills in from the left. Dependency order is kept: a
    stage's inputs belong to an earlier or the same checkpoint, preparation comes first and
    the tables, figures and report last.
    """
    setup = [s for s in stages if s.segment is None and s.kind in ("prepare", "ref")]
    gathering = [s for s in stages if s.segment is None and s.kind not in ("prepare", "ref")]
    per_checkpoint = sorted((s for s in stages if s.segment is not None), key=lambda s: s.segment)
    return setup + per_checkpoint + gathering


def _image_size(ds):
    size = ds.sample.get("image_size") or ds.train.get("image_size")
    if size:
        return int(size)
    config = load_config(ds.config, model_and_diffusion_defaults(), sections=("model",))
    return int(config.get("image_size", model_and_diffusion_defaults()["image_size"]))


def _figure_stages(plan, index, results):
    """[figures.NAME] tables: an analysis script, the inputs it takes from the grid, and its own flags.

    `inputs` may name "config" (the dataset's config), "checkpoints" (every run's
    last EMA checkpoint as name=path), "data" (the prepared images),
    "reference" (the same, under --reference), "samples" (every sample npz of
    the last checkpoint as run:T=path; `samples_from = "ddim"` keeps one sampler's)
    and "results" (the registry). The
    figure waits for the stages that make those inputs, or for every
    evaluation when it reads the registry.
    """
    stages = []
    for name, spec in plan.figures.items():
        if not isinstance(spec, dict) or "script" not in spec:
            raise ValueError(f"[figures.{name}] needs a 'script' (a module of {FIGURE_PACKAGE})")
        label = spec.get("dataset", plan.datasets[0].name)
        if label not in index:
            raise ValueError(f"[figures.{name}] names dataset {label!r}, which the plan does not have")
        ds = index[label]
        argv, deps = ["-m", f"{FIGURE_PACKAGE}.{spec['script']}"], []
        for item in spec.get("inputs", []):
            if item == "config":
                argv += ["--config", ds["config"]]
            elif item == "checkpoints":
                argv += ["--checkpoints", ",".join(f"{run}={path}" for run, (_, path) in ds["train"].items())]
                deps += [stage for stage, _ in ds["train"].values()]
            elif item in ("data", "reference"):
                argv += ["--data_dir" if item == "data" else "--reference", ds["data_dir"]]
                deps += ds["prepare"]
            elif item == "samples":
                chosen = [c for c in ds["samples"] if spec.get("samples_from", c[4]) == c[4]]
                if not chosen:
                    raise ValueError(f"[figures.{name}] has no samples of the last checkpoint from {spec.get('samples_from')!r}")
                argv += ["--samples", ",".join(f"{run}:{steps}={npz}" for run, steps, npz, _, _ in chosen)]
                deps += [stage for _, _, _, stage, _ in chosen]
            elif item == "results":
                argv += ["--results", results, "--dataset", label]
                deps += ds["evaluations"]
            else:
                raise ValueError(f"[figures.{name}] unknown input {item!r}")
        out = plan.under_root("figures", name)
        flags = {k: v for k, v in spec.items() if k not in ("script", "dataset", "inputs", "caption", "samples_from")}
        stages.append(
            Stage(
                name=f"figure/{name}",
                kind="figure",
                argv=argv + ["--out", out] + _flags(flags),
                outputs=[out + ".png", out + ".csv"],
                deps=deps,
            )
        )
    return stages
