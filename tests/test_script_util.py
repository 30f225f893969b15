"""ADM's flags and factories: a MODEL_FLAGS line builds ADM's model; TOML configs behave like flags."""

import shlex

import pytest
import torch as th

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.script_util import (
    DEFAULT_CHANNEL_MULT,
    args_to_dict,
    check_model_flags,
    create_argparser,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    parse_args_with_config,
)
from tests.tiny import TINY_MODEL_FLAGS

ADM_256_UNCOND = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)


def parse(argv, config=None):
    defaults = model_and_diffusion_defaults()
    parser = create_argparser(defaults)
    if config:
        argv = ["--config", str(config)] + argv
    return parse_args_with_config(parser, defaults, argv)


def test_adm_model_flags_build_adms_256_model_with_its_parameter_count():
    args = parse(shlex.split(ADM_256_UNCOND))
    with th.device("meta"):
        model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults()))
    assert sum(p.numel() for p in model.parameters()) == 552_814_086
    assert diffusion.model_var_type == gd.ModelVarType.LEARNED_RANGE
    assert diffusion.loss_type == gd.LossType.MSE
    assert diffusion.num_timesteps == 1000


def test_defaults_carry_the_weighting_flags():
    defaults = model_and_diffusion_defaults()
    for key in ("weight_schedule", "weight_space", "p2_k", "p2_gamma", "min_snr_gamma", "predict_v", "num_classes"):
        assert key in defaults
    assert defaults["weight_schedule"] == "constant"


def test_config_file_sets_values_and_flags_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[model]\nimage_size = 32\nattention_resolutions = 16\nlearn_sigma = true\n"
        "[diffusion]\nweight_schedule = \"debias\"\np2_k = 2\n"
    )
    args = parse(["--weight_schedule", "p2"], config=cfg)
    assert args.image_size == 32
    assert args.attention_resolutions == "16"
    assert args.learn_sigma is True
    assert args.p2_k == 2.0 and isinstance(args.p2_k, float)
    assert args.weight_schedule == "p2"


def test_config_with_unknown_key_names_it(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("image_size = 32\nlearning_rate = 1e-4\n")
    with pytest.raises(ValueError, match="unknown key\\(s\\) learning_rate"):
        parse([], config=cfg)


def test_config_with_wrong_type_or_missing_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("learn_sigma = 1\n")
    with pytest.raises(ValueError, match="learn_sigma"):
        parse([], config=cfg)
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse([], config=tmp_path / "missing.toml")


def test_prediction_targets_and_exclusive_flags():
    kw = model_and_diffusion_defaults()
    kw.update(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="")
    for flags, expected in (
        ({}, gd.ModelMeanType.EPSILON),
        ({"predict_xstart": True}, gd.ModelMeanType.START_X),
        ({"predict_v": True}, gd.ModelMeanType.VELOCITY),
    ):
        _, diffusion = create_model_and_diffusion(**{**kw, **flags})
        assert diffusion.model_mean_type == expected
    with pytest.raises(ValueError, match="exclusive"):
        create_model_and_diffusion(**{**kw, "predict_v": True, "predict_xstart": True})


def test_linear_schedule_with_too_few_steps_is_refused():
    with pytest.raises(ValueError, match="cosine"):
        gd.get_named_beta_schedule("linear", 20)


def test_bad_model_flags_say_what_is_expected():
    kw = model_and_diffusion_defaults()
    kw.update(image_size=48, num_channels=32, num_res_blocks=1)
    with pytest.raises(ValueError, match="channel_mult"):
        create_model_and_diffusion(**kw)
    kw.update(image_size=32, attention_resolutions="5")
    with pytest.raises(ValueError, match="attention_resolutions"):
        create_model_and_diffusion(**kw)


@pytest.mark.parametrize("flags, message", [
    (dict(num_channels=0), r"^--num_channels 0: must be positive"),
    (dict(num_channels=-64), r"^--num_channels -64: must be positive"),
    (dict(num_channels=48), r"^--channel_mult 1,2 with --num_channels 48: level 0 gets 48 channels"),
    (dict(channel_mult="1,2,2,2,2,2"), r"^--channel_mult 1,2,2,2,2,2 has 6 levels, too deep for --image_size 16: .* "
                                       r"multiple of 32; give at most 5 levels$"),
    (dict(image_size=24, channel_mult="1,2,2,2,2", attention_resolutions="6"), r"multiple of 16; give at most 4 levels$"),
    (dict(attention_resolutions="4"), r"^--attention_resolutions 4: 4 is not among the resolutions .* \(16, 8\)"),
])
def test_model_flags_the_unet_cannot_take_are_refused_in_one_line(flags, message):
    kw = {**model_and_diffusion_defaults(), **TINY_MODEL_FLAGS, **flags}
    with pytest.raises(ValueError, match=message):
        check_model_flags(kw)
    with pytest.raises(ValueError, match=message):
        create_model_and_diffusion(**kw)


@pytest.mark.parametrize("image_size", sorted(DEFAULT_CHANNEL_MULT))
def test_adm_model_flags_pass_the_check(image_size):
    # ADM's defaults and the attention resolutions of its released models and of the paper's configs.
    for attention in ("16,8", "32,16,8", "16"):
        flags = dict(image_size=image_size, num_channels=256 if image_size == 512 else 128, channel_mult="",
                     attention_resolutions=attention)
        check_model_flags({**model_and_diffusion_defaults(), **flags})
    check_model_flags({**model_and_diffusion_defaults(), **TINY_MODEL_FLAGS, "channel_mult": "1,2,2,2,2"})


def test_class_conditional_model_takes_labels():
    kw = model_and_diffusion_defaults()
    kw.update(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
              class_cond=True, num_classes=10, learn_sigma=True)
    model, diffusion = create_model_and_diffusion(**kw)
    assert model.label_emb.num_embeddings == 10
    losses = diffusion.training_losses(model, th.zeros(2, 3, 32, 32), th.tensor([1, 900]), model_kwargs={"y": th.tensor([0, 9])})
    assert th.isfinite(losses["loss"]).all()


def test_config_sections_let_one_file_serve_training_and_sampling(tmp_path):
    from guided_diffusion.script_util import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nimage_size = 32\n[train]\nlr = 2e-5\n[sample]\nbatch_size = 64\n")
    defaults = {**model_and_diffusion_defaults(), "batch_size": 16}
    assert load_config(cfg, defaults, sections=("model", "diffusion", "sample")) == {"image_size": 32, "batch_size": 64}
    with pytest.raises(ValueError, match="unknown key\\(s\\) lr"):
        load_config(cfg, defaults, sections=("model", "train"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlr = 1\n")
    with pytest.raises(ValueError, match="unknown table \\[training\\]"):
        load_config(bad, defaults)
