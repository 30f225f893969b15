"""The paper's published numbers (Yu et al., ECCV 2024, Tables 1-4), as printed, digits included.

Values are strings so that the tables reproduce the paper's own precision
("99.00", "12.3146"); None marks a cell the paper leaves empty ("-"). Keys
use the registry's names: datasets ffhq, celebahq, afhq_dog, metfaces,
cifar10, imagenet; weightings constant, p2, min_snr, debias ("Ours").
"""

DATASET_LABELS = {
    "ffhq": "FFHQ",
    "celebahq": "CelebA-HQ",
    "afhq_dog": "AFHQ-dog",
    "metfaces": "MetFaces",
    "cifar10": "CIFAR-10",
    "imagenet": "ImageNet",
}

WEIGHTING_LABELS = {
    "constant": "Constant",
    "p2": "P2",
    "min_snr": "Min-SNR",
    "debias": "Ours (debias)",
}

# The paper's models are trained for 500K iterations (Section 5.1, "Training details").
PAPER_ITERATIONS = 500_000

# Table 1: FID, unconditional generation, DDPM sampling with T steps.
# "p2_reported" is the P2* column: values reported in the P2 paper, for reference only.
TABLE1_FID = {
    ("ffhq", 1000): {"constant": "10.864", "p2": "6.517", "p2_reported": "6.92", "min_snr": "6.501", "debias": "6.354"},
    ("ffhq", 500): {"constant": "11.027", "p2": "6.792", "p2_reported": "6.97", "min_snr": "6.873", "debias": "6.706"},
    ("ffhq", 250): {"constant": "11.780", "p2": "7.478", "p2_reported": None, "min_snr": "7.722", "debias": "7.385"},
    ("ffhq", 100): {"constant": "15.671", "p2": "10.855", "p2_reported": None, "min_snr": "11.391", "debias": "10.815"},
    ("ffhq", 50): {"constant": "22.375", "p2": "16.538", "p2_reported": None, "min_snr": "17.328", "debias": "15.345"},
    ("ffhq", 20): {"constant": "41.270", "p2": "34.399", "p2_reported": None, "min_snr": "34.652", "debias": "29.380"},
    ("celebahq", 1000): {"constant": "9.374", "p2": "7.258", "p2_reported": "6.91", "min_snr": "6.322", "debias": "5.980"},
    ("celebahq", 500): {"constant": "10.236", "p2": "7.718", "p2_reported": None, "min_snr": "6.923", "debias": "6.572"},
    ("celebahq", 250): {"constant": "11.097", "p2": "8.433", "p2_reported": None, "min_snr": "8.016", "debias": "7.604"},
    ("celebahq", 100): {"constant": "12.006", "p2": "9.297", "p2_reported": None, "min_snr": "9.385", "debias": "8.836"},
    ("afhq_dog", 1000): {"constant": "18.300", "p2": "17.068", "p2_reported": "11.55", "min_snr": "17.342", "debias": "14.928"},
    ("afhq_dog", 500): {"constant": "18.606", "p2": "17.474", "p2_reported": None, "min_snr": "17.639", "debias": "14.946"},
    ("afhq_dog", 250): {"constant": "19.104", "p2": "17.759", "p2_reported": "11.66", "min_snr": "17.922", "debias": "15.033"},
    ("afhq_dog", 100): {"constant": "20.446", "p2": "18.344", "p2_reported": None, "min_snr": "18.421", "debias": "15.821"},
    ("metfaces", 1000): {"constant": "41.418", "p2": "14.204", "p2_reported": None, "min_snr": "30.876", "debias": "9.168"},
    ("metfaces", 500): {"constant": "42.115", "p2": "14.448", "p2_reported": None, "min_snr": "31.168", "debias": "9.429"},
    ("metfaces", 250): {"constant": "42.324", "p2": "14.738", "p2_reported": "36.80", "min_snr": "31.340", "debias": "9.849"},
    ("metfaces", 100): {"constant": "42.624", "p2": "14.994", "p2_reported": None, "min_snr": "31.626", "debias": "10.388"},
}

# Table 2: class-conditional generation, FID and IS.
TABLE2 = {
    ("cifar10", 1000): {
        "fid": {"constant": "11.97", "p2": "11.71", "min_snr": "9.02", "debias": "8.45"},
        "is": {"constant": "8.07", "p2": "8.11", "min_snr": "8.14", "debias": "8.13"},
    },
    ("imagenet", 100): {
        "fid": {"constant": "99.00", "p2": "95.47", "min_snr": "94.81", "debias": "93.32"},
        "is": {"constant": "11.96", "p2": "13.02", "min_snr": "13.21", "debias": "13.37"},
    },
}

# Table 3: FFHQ against prior generative models. "iterations" marks the rows
# that are this method (debias weighting on ADM), which our runs can fill.
TABLE3_FFHQ = (
    {"method": "BigGAN [2]", "type": "GAN", "fid": "12.4", "iterations": None},
    {"method": "UNet GAN [36]", "type": "GAN", "fid": "10.9", "iterations": None},
    {"method": "StyleGAN [19]", "type": "GAN", "fid": "4.16", "iterations": None},
    {"method": "StyleGAN2 [20]", "type": "GAN", "fid": "3.73", "iterations": None},
    {"method": "VQGAN [8]", "type": "GAN+AR", "fid": "9.6", "iterations": None},
    {"method": "LDM [31]", "type": "Diffusion model", "fid": "4.98", "iterations": None},
    {"method": "ADM (Baseline) [7]", "type": "Diffusion model", "fid": "10.86", "iterations": None},
    {"method": "Ours (500k iterations)", "type": "Diffusion model", "fid": "6.35", "iterations": 500_000},
    {"method": "Ours (1000k iterations)", "type": "Diffusion model", "fid": "4.97", "iterations": 1_000_000},
)
# Table 3's own rows equal Table 1's FFHQ T=1000 cells (6.35 ~ 6.354, 10.86 ~ 10.864).
TABLE3_STEPS = 1000

# Table 4: CelebA-HQ, T=100 sampling steps, different prediction targets (FID).
TABLE4_STEPS = 100
TABLE4_CELEBAHQ = (
    {"label": "x0", "pred": "x0", "weight_schedule": "constant", "fid": "12.3146"},
    {"label": "v", "pred": "v", "weight_schedule": "constant", "fid": "12.2773"},
    {"label": "eps", "pred": "eps", "weight_schedule": "constant", "fid": "12.0064"},
    {"label": "eps (P2)", "pred": "eps", "weight_schedule": "p2", "fid": "9.2972"},
    {"label": "eps (MinSNR)", "pred": "eps", "weight_schedule": "min_snr", "fid": "9.3851"},
    {"label": "eps (Ours)", "pred": "eps", "weight_schedule": "debias", "fid": "8.8363"},
)
