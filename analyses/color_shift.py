"""Colour shift and leftover noise as numbers: statistics of sample sets against the training set.

The paper shows colour shift by eye (Fig. 1, 6). Here every set of images is
summarised, in [0, 255] units, by its per-channel pixel mean and standard
deviation over all pixels of all images, and by the distribution of each
image's spatial mean colour. Against the reference set a sample set gets
- mean_diff_{r,g,b}: sample mean minus reference mean;
- std_ratio_{r,g,b}: sample std over reference std;
- mean_shift_l2: the L2 distance between the two mean colour vectors;
- mean_spread: the spread of the per-image mean colours (their standard
  deviation over images, averaged over the channels), which a colour shift
  that tints each image differently inflates (the paper's Fig. 1);
- spatial_mean_fd: the Frechet distance between Gaussians fitted to the
  per-image mean colours, which also sees tints that vary from image to
  image and cancel in the set mean;
- rough_fraction: the share of images whose roughness (mean absolute
  difference between neighbouring pixels) exceeds the 99th percentile of
  the reference images' roughness: grain or leftover noise, which the
  colour numbers alone do not reveal.
"""

import numpy as np
from tqdm.auto import tqdm

from evaluations.frechet import frechet_distance, gaussian_statistics

from .flags import parse_named_paths, require_positive
from .images import image_batches
from .outputs import output_prefix, save_figure, write_csv
from .plotting import new_figure

CHANNELS = ("r", "g", "b")
REFERENCE_LABEL = "reference"
# An image rougher than this percentile of the reference images counts as rough.
ROUGH_PERCENTILE = 99.0


def roughness(images):
    """Per image, the mean absolute difference between vertically and between horizontally neighbouring
    pixels, summed over the two directions, in [0, 255] units."""
    values = images.astype(np.float64)
    vertical = np.abs(np.diff(values, axis=1)).mean(axis=(1, 2, 3))
    horizontal = np.abs(np.diff(values, axis=2)).mean(axis=(1, 2, 3))
    return vertical + horizontal


class ChannelStatistics:
    """Running per-channel sums over pixels, plus every image's mean colour and roughness, in float64."""

    def __init__(self):
        self.pixels = 0
        self.sum = np.zeros(3)
        self.sum_of_squares = np.zeros(3)
        self.image_means = []
        self.image_roughness = []

    def update(self, images):
        values = images.reshape(images.shape[0], -1, 3).astype(np.float64)
        self.pixels += values.shape[0] * values.shape[1]
        self.sum += values.sum(axis=(0, 1))
        self.sum_of_squares += (values**2).sum(axis=(0, 1))
        self.image_means.append(values.mean(axis=1))
        self.image_roughness.append(roughness(images))

    def summary(self):
        if self.pixels == 0:
            raise ValueError("no images to summarise")
        mean = self.sum / self.pixels
        std = np.sqrt(np.maximum(self.sum_of_squares / self.pixels - mean**2, 0.0))
        return {"num_images": sum(m.shape[0] for m in self.image_means), "mean": mean, "std": std,
                "image_means": np.concatenate(self.image_means), "roughness": np.concatenate(self.image_roughness)}


def image_set_statistics(path, image_size=None, batch_size=256, limit=None, progress=True, description=None):
    statistics = ChannelStatistics()
    for batch in tqdm(image_batches(path, batch_size, image_size, limit), desc=description, disable=not progress,
                      leave=False):
        statistics.update(batch)
    return statistics.summary()


def fitted_frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to the rows of `a` and of `b` (NaN with fewer than 2 rows)."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        return float("nan")
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def compare(sample, reference):
    """The colour-shift numbers of one summarised sample set against the summarised reference."""
    return {
        "mean_diff": sample["mean"] - reference["mean"],
        "std_ratio": sample["std"] / reference["std"],
        "mean_shift_l2": float(np.linalg.norm(sample["mean"] - reference["mean"])),
        "mean_spread": float(sample["image_means"].std(axis=0, ddof=1).mean()) if len(sample["image_means"]) > 1 else float("nan"),
        "spatial_mean_fd": fitted_frechet_distance(sample["image_means"], reference["image_means"]),
        "rough_fraction": float(np.mean(sample["roughness"] > np.percentile(reference["roughness"], ROUGH_PERCENTILE))),
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
        + ["mean_shift_l2", "mean_spread", "spatial_mean_fd", "rough_fraction"]
    )
    rows = []
    for name, steps, summary, numbers in result["rows"]:
        rows.append(
            [name, "" if steps is None else steps, summary["num_images"]]
            + [float(v) for v in summary["mean"]] + [float(v) for v in summary["std"]]
            + [float(v) for v in numbers["mean_diff"]] + [float(v) for v in numbers["std_ratio"]]
            + [numbers["mean_shift_l2"], numbers["mean_spread"], numbers["spatial_mean_fd"], numbers["rough_fraction"]]
        )
    csv_path = write_csv(prefix + ".csv", header, rows)
    png_path = save_figure(_color_shift_figure(result), prefix + ".png", dpi=110)
    return {"png": png_path, "csv": csv_path}


def _color_shift_figure(result):
    """Three panels over the sets (one line per checkpoint over T when the sets name T): the spread of the
    per-image mean colours, their Frechet distance to the reference's, and the pixel standard deviation."""
    reference = result["rows"][0]
    samples = result["rows"][1:]
    panels = (
        ("spread of per-image mean colour", lambda summary, numbers: numbers["mean_spread"], True),
        ("Frechet distance of image means\nto the reference's", lambda summary, numbers: numbers["spatial_mean_fd"], False),
        ("pixel standard deviation", lambda summary, numbers: float(summary["std"].mean()), True),
    )
    figure = new_figure(12, 3.6)
    all_axes = figure.subplots(1, 3)
    by_steps = all(steps is not None for _, steps, _, _ in samples)
    names = list(dict.fromkeys(name for name, *_ in samples))
    for axes, (label, value, reference_line) in zip(all_axes, panels):
        if by_steps:
            for index, name in enumerate(names):
                mine = sorted((steps, value(summary, numbers)) for n, steps, summary, numbers in samples if n == name)
                axes.plot([s for s, _ in mine], [v for _, v in mine], marker="o", color=f"C{index}", label=name)
            axes.set_xscale("log")
            steps = sorted({s for _, s, _, _ in samples})
            axes.set_xticks(steps, [str(s) for s in steps])
            axes.minorticks_off()
            axes.set_xlabel("sampling steps T")
        else:
            x = np.arange(len(samples))
            axes.bar(x, [value(summary, numbers) for _, _, summary, numbers in samples], 0.6, color="tab:gray")
            axes.set_xticks(x, [name for name, *_ in samples], fontsize=8)
        if reference_line:
            axes.axhline(value(reference[2], reference[3]), color="black", linestyle="--", linewidth=1,
                         label="training images")
        axes.set_title(label + " [0, 255]", fontsize=10)
        axes.grid(True, alpha=0.3)
    all_axes[0].legend(fontsize=8)
    figure.suptitle(f"Colour statistics of the samples against {reference[2]['num_images']} training images",
                    fontsize=11)
    return figure


def run(samples, reference, out=None, image_size=None, batch_size=256, reference_limit=None, progress=True):
    """`samples` as `name[:T]=path,...` (see parse_sample_sets); writes the CSV and the bar plot."""
    require_positive(batch_size, "--batch_size")
    if reference_limit is not None:
        require_positive(reference_limit, "--reference_limit")
    result = color_shift(parse_sample_sets(samples), reference, image_size, batch_size, reference_limit, progress)
    return write_color_shift(result, output_prefix(out, "color_shift"))
