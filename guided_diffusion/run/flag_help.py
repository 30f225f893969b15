"""The --help line of every flag of image_train.py and image_sample.py.

Model, diffusion, training and sampling flags have their lines here; the lines
of the loss-weighting parameters and of the samplers' own options come from
their registries (`weighting`, `samplers`), so a new schedule or sampler
documents its flags where it declares them.
"""

from .. import samplers, weighting
from . import fast_paths
from ..dist_util import DIST_TIMEOUT_MINUTES
from ..fp16_util import PRECISIONS
from ..targets import TARGETS

MODEL_HELP = dict(
    image_size="side of the square images, in pixels",
    num_channels="base channel count of the UNet",
    num_res_blocks="residual blocks per resolution",
    num_heads="attention heads (when --num_head_channels is -1)",
    num_heads_upsample="attention heads in the upsampling path (-1: as --num_heads)",
    num_head_channels="channels per attention head; overrides --num_heads when not -1",
    attention_resolutions="comma list of resolutions with self-attention, e.g. 32,16,8",
    channel_mult="comma list of per-resolution channel multipliers; empty: ADM's default for --image_size",
    dropout="dropout rate in the residual blocks",
    class_cond="class-conditional model (labels from file-name prefixes when training)",
    num_classes="number of classes of a class-conditional model",
    use_checkpoint="gradient checkpointing: less memory, more compute",
    use_scale_shift_norm="FiLM-like conditioning of the residual blocks on the timestep (ADM)",
    resblock_updown="residual blocks for up- and downsampling (BigGAN style)",
    use_fp16="ADM's float16 torso; on a device without fast float16 it runs fp32 and says so",
    use_new_attention_order="split qkv before heads (ADM's alternative attention layout)",
)

DIFFUSION_HELP = dict(
    learn_sigma="learn the variance (ADM's learned range, trained by the VB term)",
    diffusion_steps="T, the number of diffusion steps the model is trained on",
    noise_schedule="beta schedule: linear or cosine",
    timestep_respacing="sampling steps: 250, ddim50, or a comma list of section counts; "
    "the fast samplers read a plain N as their step count",
    use_kl="train on the variational bound alone",
    predict_xstart="predict x0 instead of the noise",
    predict_v="predict v = sqrt(a_t) eps - sqrt(1 - a_t) x0 instead of the noise",
    rescale_timesteps="feed the model timesteps scaled to 0..1000",
    rescale_learned_sigmas="ADM's hybrid loss: MSE plus the VB term (with --learn_sigma)",
    weight_space=f"what the weighting multiplies: {', '.join(weighting.WEIGHT_SPACES)} "
    f"(the error of the network's own target, one of {', '.join(TARGETS)}, or its epsilon error)",
)

# Training and sampling read these two flags the same way.
PRECISION_HELP = f"{', '.join(PRECISIONS)}; default fp32, or fp16 with --use_fp16 True on a device with fast float16"
DEVICE_HELP = "cuda or cpu; empty picks cuda when available (a rank without the GPU it needs stops the job)"
DIST_TIMEOUT_HELP = (
    f"minutes a rank waits in a collective or barrier before the job fails (default {DIST_TIMEOUT_MINUTES}: one "
    "DDPM-1000 batch behind the others, with margin; NCCL's own is 10)"
)

TRAINING_HELP = dict(
    data_dir="folder (or gs://, az:// URL) of training images, searched recursively",
    log_dir="logs and checkpoints; default $OPENAI_LOGDIR, else a new temp folder",
    schedule_sampler=(
        "timestep sampling: uniform, loss-second-moment (importance sampling by the loss) or loss-weight "
        "(t drawn in proportion to the weighting w(t), loss times 1/(T p(t)): same objective, less variance)"
    ),
    lr="AdamW learning rate",
    weight_decay="AdamW weight decay",
    lr_anneal_steps="decay the lr linearly to 0 over this many steps and stop there (0: constant lr)",
    max_steps="stop after this many iterations (0: no limit, as ADM)",
    batch_size="images per rank per step",
    microbatch="split each batch into pieces of this size for memory (-1: none)",
    ema_rate="comma list of EMA rates, one EMA per rate",
    ema_warmup="EMA decay min(rate, (1 + n) / (10 + n)) instead of rate from the first step",
    log_interval="iterations between log rows",
    save_interval="iterations between checkpoints",
    resume_checkpoint="auto (newest complete set in --log_dir), a modelNNNNNN.pt, or a checkpointNNNNNN.json",
    fp16_scale_growth="growth of log2 of the fp16 loss scale per taken step",
    precision=PRECISION_HELP,
    seed="seed of the initial weights; each rank and resumed segment derives its own noise and data order",
    num_workers="DataLoader worker processes per rank",
    random_crop="random crops instead of centre crops",
    random_flip="random horizontal flips",
    keep_checkpoints="keep only the newest K complete checkpoint sets (0: keep all, as ADM)",
    keep_every="with --keep_checkpoints, also keep every set whose step is a multiple of this (0: none)",
    allow_changed_flags=(
        "comma list of network or objective flags (diffusion_steps, noise_schedule, ...) that a resume may change "
        "from its checkpoint's, e.g. to fine-tune; the change is recorded in the new manifests (default: none, refused)"
    ),
    max_skipped_fraction=(
        "a checkpoint set is unhealthy when more than this fraction of the updates since the previous save were "
        "skipped as non-finite; a run whose last set is unhealthy exits 1"
    ),
    device=DEVICE_HELP,
    dist_timeout=DIST_TIMEOUT_HELP,
)

SAMPLING_HELP = dict(
    model_path="checkpoint to sample: model*.pt, ema_*.pt or any ADM state dict; the flags saved beside it are the defaults",
    allow_unhealthy="sample a checkpoint whose manifest marks it unhealthy (refused by default)",
    num_samples="images in the merged samples npz",
    batch_size="images per rank per step; auto: the largest batch that fits on the GPU",
    clip_denoised="clip the predicted x0 to [-1, 1] (ddpm, ddim)",
    use_ddim="ADM's flag: True means --sampler ddim",
    seed="with the sample index, determines every sample",
    class_labels="class-conditional models: uniform, balanced or a class index",
    out_dir="run directory of the samples; default --sample_dir, else $OPENAI_LOGDIR",
    sample_dir="P2's and the paper's name for --out_dir",
    png="also write png/{index:06d}.png",
    precision=PRECISION_HELP,
    device=DEVICE_HELP,
    noise_device="cpu (the same numbers on every machine) or device (drawn on the GPU: other numbers than the "
    "CPU's); default device on CUDA",
    shard="this task's share of the indices, 0 .. --num_shards - 1 (SLURM array tasks)",
    num_shards="independent tasks sampling into one --out_dir; the last to finish merges",
    dist_timeout=DIST_TIMEOUT_HELP,
)


def weighting_help():
    """--weight_schedule with its choices, and every schedule parameter with the schedules that read it."""
    lines = {
        "weight_schedule": "loss weighting, one of: " + ", ".join(weighting.weight_schedule_names()),
    }
    for parameter, owners in weighting.parameter_owners().items():
        summaries = [f"{name} ({_first_line(weighting.WEIGHT_SCHEDULES[name].__doc__)})" for name in owners]
        carriers = [
            f"{carrier}, which ignores it as {weighting.SCHEDULE_ORIGINS.get(carrier, 'its code')} does"
            for carrier, lender in weighting.CARRIES_PARAMETERS_OF.items() if lender in owners
        ]
        lines[parameter] = f"parameter of --weight_schedule {' and '.join(summaries)}; an error with any other schedule" + (
            f" but {'; '.join(carriers)}" if carriers else ""
        )
    return lines


def model_and_diffusion_help():
    return {**MODEL_HELP, **DIFFUSION_HELP, **weighting_help()}


def _fast_path_help(defaults):
    return {key: text for key, text in fast_paths.FLAG_HELP.items() if key in defaults}


def training_help():
    return {**model_and_diffusion_help(), **TRAINING_HELP, **_fast_path_help(fast_paths.training_flag_defaults())}


def sampling_help():
    lines = {**model_and_diffusion_help(), **SAMPLING_HELP, **_fast_path_help(fast_paths.sampling_flag_defaults())}
    lines["sampler"] = "; ".join(
        f"{name}: {samplers.get_sampler(name).summary}" if samplers.get_sampler(name).summary else name
        for name in samplers.sampler_names()
    )
    for option in samplers.SAMPLER_OPTION_DEFAULTS:
        users = [name for name in samplers.sampler_names() if option in samplers.get_sampler(name).options]
        lines[option] = samplers.SAMPLER_OPTION_HELP.get(option, "option of --sampler " + " and ".join(users))
    return lines


def _first_line(text):
    return (text or "").strip().splitlines()[0].rstrip(".") if (text or "").strip() else "no description"
