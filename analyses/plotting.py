"""Figures on matplotlib's Agg canvas through the object API: no display and no pyplot global state."""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

GRID_PADDING_PIXELS = 2
GRID_BACKGROUND = 255


def new_figure(width_inches, height_inches):
    figure = Figure(figsize=(width_inches, height_inches), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def image_grid_figure(cells, row_labels, column_labels, title=None):
    """One picture of a grid of equally sized uint8 HWC images; a None cell stays blank.

    Cells are shown at (at least) their native resolution with nearest-neighbour
    scaling, so single pixels stay visible for small images.
    """
    rows, columns = len(cells), max(len(row) for row in cells)
    shapes = {cell.shape for row in cells for cell in row if cell is not None}
    if len(shapes) != 1:
        raise ValueError(f"grid cells must all have one shape, got {sorted(shapes)}")
    height, width, channels = shapes.pop()
    pad = GRID_PADDING_PIXELS
    canvas = np.full(
        (rows * (height + pad) - pad, columns * (width + pad) - pad, channels), GRID_BACKGROUND, dtype=np.uint8
    )
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None:
                top, left = r * (height + pad), c * (width + pad)
                canvas[top : top + height, left : left + width] = cell

    cell_inches = 0.9
    label_inches = 0.12 * max([len(label) for label in row_labels] + [4])
    figure = new_figure(label_inches + columns * cell_inches, 0.5 + (0.3 if title else 0.0) + rows * cell_inches)
    axes = figure.subplots()
    axes.imshow(canvas, interpolation="nearest")
    axes.set_xticks([c * (width + pad) + width / 2 - 0.5 for c in range(columns)], column_labels)
    axes.set_yticks([r * (height + pad) + height / 2 - 0.5 for r in range(rows)], row_labels)
    axes.xaxis.tick_top()
    axes.tick_params(length=0, labelsize=8)
    for spine in axes.spines.values():
        spine.set_visible(False)
    if title:
        axes.set_title(title, fontsize=9)
    return figure


def grid_dpi(image_height):
    """Enough dots per inch for a 0.9-inch grid cell to show every pixel of the image, within 80..300."""
    return int(min(300, max(80, round(image_height / 0.9))))
