"""Every command in README.md and docs/*.md runs as written, at tiny size where it is large.

The commands are read from the fenced ```bash blocks, in document order, and run in one
scratch directory (so that the FID command finds the samples the sampling command wrote).
"Tiny size" keeps each command's own flags and changes only sizes:

- the numbers 500000 (a checkpoint step) and 50000 (a sample count) become 2 and 8, and
  image sizes in file names 256x256 become 16x16, so file names still chain;
- training and sampling get the tiny UNet's flags appended (argparse keeps the last), two
  training steps; analyses a coarser `--stride`;
- `mpiexec -n 8` and `torchrun --nproc_per_node 8` run the entry point in-process (their
  multi-process behaviour is the business of the `mpi` tests), after checking the
  launcher exists;
- a plan is listed (`--dry-run`) rather than trained for days;
- `make` targets are checked with `make -n` (they install and run the suite themselves),
  and the documented install commands must be the ones `make install` runs.
A command no rule covers fails the test, so that a new page cannot slip past it.
"""

import glob
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
SCALE = (("500000", "000002"), ("50000", "8"), ("256x256", "16x16"))
TINY_MODEL = ["--image_size", "16", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
              "--attention_resolutions", "8", "--num_head_channels", "16"]
TINY_RUN = {
    "scripts.image_train": TINY_MODEL + ["--max_steps", "2", "--save_interval", "2", "--batch_size", "2",
                                         "--log_interval", "1", "--num_workers", "0"],
    "scripts.image_sample": TINY_MODEL + ["--batch_size", "4"],
    "scripts.analysis.one_step_x0": TINY_MODEL,
    "scripts.analysis.mse_step": TINY_MODEL + ["--stride", "250"],
    "scripts.analysis.few_step_grid": TINY_MODEL,
    "datasets.prepare": ["--image_size", "16", "--workers", "1"],
}


def documented_commands():
    """(page, command) for every command line of the pages' bash blocks, continuations joined."""
    found = []
    for page in PAGES:
        text = open(os.path.join(REPO, page)).read()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split(" # ")[0].strip()
                if command and not command.startswith("#"):
                    found.append((page, command))
    return found


def entry_point(words):
    """(module, argv) of `python -m M ...`, `python scripts/x.py ...` or `torchrun ... scripts/x.py ...`."""
    if words[0] == "mpiexec":
        assert words[1] == "-n" and words[2].isdigit(), words
        assert os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")), "mpiexec is not in the venv"
        words = words[3:]
    elif words[0] == "torchrun":
        assert words[1] == "--nproc_per_node" and words[2].isdigit(), words
        words = ["python"] + words[3:]
    if words[0] != "python":
        return None, None
    if words[1] == "-m":
        return words[2], words[3:]
    assert os.path.exists(os.path.join(REPO, words[1])), f"{words[1]} does not exist"
    return os.path.splitext(words[1])[0].replace("/", "."), words[2:]


def make_recipe(target, *variables):
    result = subprocess.run(["make", "--no-print-directory", "-B", "-n", target, *variables], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"make -n {target}: {result.stderr.strip()}"
    return result.stdout.replace("--quiet ", "")


def adm_checkpoint_for(argv, path):
    """ADM's released checkpoint, at tiny size: a state dict of the UNet the command's flags describe."""
    import torch

    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
    from scripts import image_sample

    flags = image_sample.parse_flags(argv)
    model, _ = create_model_and_diffusion(**{k: flags[k] for k in model_and_diffusion_defaults()})
    torch.save(model.state_dict(), path)


def source_images(folder, count=32, size=32):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i:05d}.png"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    # The docs' commands run from the checkout: its configs are where they say.
    os.symlink(os.path.join(REPO, "configs"), root / "configs")
    source_images(root / "downloads" / "ffhq-dataset" / "images1024x1024")
    return root


def run_command(page, command, variables, scratch, monkeypatch):
    for name, value in variables.items():
        command = command.replace(f"${name}", value)
    assignment = re.fullmatch(r"([A-Z_]+)=(\S+)", command)
    if assignment:
        variables[assignment.group(1)] = assignment.group(2)
        return "variable"
    words = shlex.split(command)
    if words[0] == "make":
        make_recipe(words[1], *words[2:])
        return "make"
    if words[0] == "python3" and words[1:3] == ["-m", "venv"] or words[0].startswith(".venv/bin/python"):
        recipe = make_recipe("install", "VENV=.venv", "PYTHON=python3")
        assert command.replace(" -m venv .venv", " -m venv .venv") in recipe, f"{page}: `{command}` is not what make install runs"
        return "install"
    for old, new in SCALE:
        command = command.replace(old, new)
    module, argv = entry_point(shlex.split(command))
    assert module is not None, f"{page}: no rule runs `{command}`"
    argv = argv + TINY_RUN.get(module, [])
    if module == "scripts.reproduce" and "--dry-run" not in argv and "slurm" not in argv:
        argv.append("--dry-run")
    if module == "scripts.image_train":
        # A page that shows the same training under several launchers means one of them, not all
        # into one log dir: the earlier run steps aside.
        log_dir = argv[argv.index("--log_dir") + 1]
        if os.path.exists(log_dir):
            os.rename(log_dir, f"{log_dir}.before-{len(os.listdir(os.path.dirname(log_dir)))}")
    if module == "scripts.image_sample" and not os.path.exists(argv[argv.index("--model_path") + 1]):
        adm_checkpoint_for(argv, argv[argv.index("--model_path") + 1])
    monkeypatch.setattr(sys, "argv", [module] + argv)
    status = importlib.import_module(module).main(argv)
    assert status in (0, None), f"{page}: `{command}` exited with {status}"
    if module == "scripts.image_train":
        # Later commands sample and analyse this run's checkpoint under the name the docs use; the
        # constant-weighting run of the analyses' $CKPTS is the same tiny network.
        sibling = os.path.join(os.path.dirname(log_dir), "constant")
        if not os.path.exists(sibling):
            shutil.copytree(log_dir, sibling)
    return module


def test_every_documented_command_runs(scratch, monkeypatch):
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    variables, ran = {}, []
    for page, command in documented_commands():
        ran.append((page, run_command(page, command, variables, scratch, monkeypatch)))
    kinds = {kind for _, kind in ran}
    assert {"make", "install", "scripts.image_train", "scripts.image_sample", "evaluations.fid"} <= kinds
    assert len(ran) >= 40


# Inline commands (`python -m M --flag ...` and `make target` in running text and tables) are
# checked without running them: the target exists, the module imports, and its parser accepts
# the flags as written (a benchmark, bare, as its defaults). A span with a grammar placeholder ([...], a|b, <name>) is a synopsis.
INLINE = re.compile(r"`((?:python -m|make) [^`]*)`")
SYNOPSIS = re.compile(r"\[|\.\.\.|\||<[a-z_]+>$|\.<")


class _Parsed(BaseException):
    pass


def inline_commands():
    found = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", open(os.path.join(REPO, page)).read(), flags=re.S).replace("\n", " ")
        found.extend((page, span) for span in INLINE.findall(text) if not SYNOPSIS.search(span))
    return found


def test_every_inline_command_names_a_real_target_and_flags_its_parser_takes(monkeypatch):
    import argparse

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    checked = set()
    for page, command in inline_commands():
        words = shlex.split(command)
        if words[0] == "make":
            make_recipe(words[1], *words[2:])
            checked.add(command)
            continue
        module = importlib.import_module(words[2])
        assert hasattr(module, "main"), f"{page}: `{command}`: {words[2]} has no main(argv)"
        if len(words) == 3:  # a module named in the text; a benchmark runs with no flags
            if "benchmark" not in words[2]:
                continue
        with pytest.raises(_Parsed):
            module.main(words[3:])
        checked.add(command)
    assert "python -m scripts.benchmarks.timestep_variance" in checked
    assert "python -m scripts.benchmarks.gpu_check --tiny --out /tmp/gpu_check" in checked
