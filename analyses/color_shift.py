"""Colour shift as numbers: per-channel statistics of sample sets against the training set.

The paper shows colour shift by eye (Fig. 1, 6). Here every set of images is
summarised, in [0, 255] units, by its per-channel pixel mean and standard
deviation over all pixels of all images, and by the distribution of each
image's spatial mean colour. Against the reference set a sample set gets
- mean_diff_{r,g,b}: sample mean minus reference mean;
- std_ratio_{r,g,b}: sample std over reference std;
- mean_shift_l2: the L2 distance between the two mean colour vectors;
- spatial_mean_fd: the Frechet distance between Gaussians fitted to the
  per-image mean colours, which also sees tints that vary from image to
  image and cancel in the set mean.
"""

import numpy as np
from scipy import linalg
from tqdm.auto import tqdm

from .flags import parse_named_paths, require_positive
from .images import image_batches
from .outputs import output_prefix, save_figure, write_csv
from .plotting import new_figure

CHANNELS = ("r", "g", "b")
REFERENCE_LABEL = "reference"


class ChannelStatistics:
    """Running per-channel sums over pixels, plus every image's mean colour, in float64."""

    def __init__(self):
        self.pixels = 0
        self.sum = np.zeros(3)
        self.sum_of_squares = np.zeros(3)
        self.image_means = []

    def update(self, images):
        values = images.reshape(images.shape[0], -1, 3).astype(np.float64)
        self.pixels += values.shape[0] * values.shape[1]
        self.sum += values.sum(axis=(0, 1))
        self.sum_of_squares += (values**2).sum(axis=(0, 1))
        self.image_means.append(values.mean(axis=1))

    def summary(self):
        if self.pixels == 0:
            raise ValueError("no images to summarise")
        mean = self.sum / self.pixels
        std = np.sqrt(np.maximum(self.sum_of_squares / self.pixels - mean**2, 0.0))
        return {"num_images": sum(m.shape[0] for m in self.image_means), "mean": mean, "std": std,
                "image_means": np.concatenate(self.image_means)}


def image_set_statistics(path, image_size=None, batch_size=256, limit=None, progress=True, description=None):
    statistics = ChannelStatistics()
    for batch in tqdm(image_batches(path, batch_size, image_size, limit), desc=description, disable=not progress,
                      leave=False):
        statistics.update(batch)
    return statistics.summary()


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to the rows of `a` and of `b`."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        return float("nan")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = linalg.sqrtm(cov_a @ cov_b)
    cross = np.real(cross)
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * cross))


def compare(sample, reference):
    """The colour-shift numbers of one summarised sample set against the summarised reference."""
    return {
        "mean_diff": sample["mean"] - reference["mean"],
        "std_ratio": sample["std"] / reference["std"],
        "mean_shift_l2": float(np.linalg.norm(sample["mean"] - reference["mean"])),
        "spatial_mean_fd": frechet_distance(sample["image_means"], reference["image_means"]),
    }


def parse_sample_sets(text):
    """`name[:T]=path,...` to (name, T or None, path) triples."""
    sets = []
    for label, path in parse_named_paths(text, "--samples"):
        name, separator, steps = label.partition(":")
        if separator:
            try:
                steps = int(steps)
            except ValueError:
                raise ValueError(f"--samples label {label!r}: expected name or name:T with an integer T") from None
        sets.append((name, steps if separator else None, path))
    if not sets:
        raise ValueError("no sample sets: give --samples name[:T]=path[,...]")
    return sets


def color_shift(sample_sets, reference_path, image_size=None, batch_size=256, reference_limit=None, progress=True):
    """Statistics and comparison rows for (name, T, path) sample sets against the reference set.

    The reference is centre-cropped to `image_size`, by default the size of the
    first sample set's images.
    """
    summaries = []
    for name, steps, path in sample_sets:
        summary = image_set_statistics(path, None, batch_size, progress=progress, description=f"{name} T={steps}")
        summaries.append((name, steps, summary))
    if image_size is None:
        image_size = _image_size_of(sample_sets[0][2])
    reference = image_set_statistics(reference_path, image_size, batch_size, reference_limit, progress, REFERENCE_LABEL)
    rows = [(REFERENCE_LABEL, None, reference, compare(reference, reference))]
    rows += [(name, steps, summary, compare(summary, reference)) for name, steps, summary in summaries]
    return {"image_size": image_size, "rows": rows}


def _image_size_of(path):
    first = next(image_batches(path, batch_size=1, limit=1))
    return first.shape[1]


def write_color_shift(result, prefix):
    header = (
        ["checkpoint", "steps", "num_images"]
        + [f"mean_{c}" for c in CHANNELS] + [f"std_{c}" for c in CHANNELS]
        + [f"mean_diff_{c}" for c in CHANNELS] + [f"std_ratio_{c}" for c in CHANNELS]
        + ["mean_shift_l2", "spatial_mean_fd"]
    )
    rows = []
    for name, steps, summary, numbers in result["rows"]:
        rows.append(
            [name, "" if steps is None else steps, summary["num_images"]]
            + [float(v) for v in summary["mean"]] + [float(v) for v in summary["std"]]
            + [float(v) for v in numbers["mean_diff"]] + [float(v) for v in numbers["std_ratio"]]
            + [numbers["mean_shift_l2"], numbers["spatial_mean_fd"]]
        )
    csv_path = write_csv(prefix + ".csv", header, rows)

    samples = result["rows"][1:]
    labels = [name if steps is None else f"{name}\nT={steps}" for name, steps, _, _ in samples]
    x = np.arange(len(samples))
    figure = new_figure(max(6.0, 1.0 + 0.9 * len(samples)) * 2, 3.8)
    diff_axes, shift_axes = figure.subplots(1, 2)
    width = 0.8 / 3
    for c, (channel, color) in enumerate(zip(CHANNELS, ("tab:red", "tab:green", "tab:blue"))):
        diff_axes.bar(x + (c - 1) * width, [numbers["mean_diff"][c] for *_, numbers in samples], width,
                      color=color, label=channel)
    diff_axes.axhline(0.0, color="black", linewidth=0.8)
    diff_axes.set_ylabel("channel mean - reference mean [0, 255]")
    diff_axes.legend(fontsize=8)
    shift_axes.bar(x, [numbers["mean_shift_l2"] for *_, numbers in samples], 0.6, color="tab:gray")
    shift_axes.set_ylabel("L2 distance of mean colours [0, 255]")
    for axes in (diff_axes, shift_axes):
        axes.set_xticks(x, labels, fontsize=8)
        axes.grid(True, axis="y", alpha=0.3)
    figure.suptitle(f"Colour shift against the reference ({result['rows'][0][2]['num_images']} images)", fontsize=10)
    png_path = save_figure(figure, prefix + ".png", dpi=100)
    return {"png": png_path, "csv": csv_path}


def run(samples, reference, out=None, image_size=None, batch_size=256, reference_limit=None, progress=True):
    """`samples` as `name[:T]=path,...` (see parse_sample_sets); writes the CSV and the bar plot."""
    require_positive(batch_size, "--batch_size")
    if reference_limit is not None:
        require_positive(reference_limit, "--reference_limit")
    result = color_shift(parse_sample_sets(samples), reference, image_size, batch_size, reference_limit, progress)
    return write_color_shift(result, output_prefix(out, "color_shift"))
