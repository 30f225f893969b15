"""The embedded default dataset: cartoon faces drawn from a seed, no download needed.

Each image is a function of (seed, index) only, so a dataset is byte-identical
for the same seed whatever the number of workers, and a larger `num_images`
extends a smaller one. Backgrounds (flat, linear or radial gradients, two-tone,
scattered shapes), skin tones, head shape, position and size, hair, ears,
eyes, brows, nose, mouth, glasses and hats all vary, so that a model's colour
shift shows in per-channel statistics and lost structure shows by eye.

Faces are drawn on a larger canvas (4x the target size up to 128 pixels,
never less than 2x) and brought down with ADM's preprocessing (BOX halving
then BICUBIC), which antialiases the edges.
"""

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from datasets.common import DatasetSpec
from datasets.sources import SourceItem

MAX_4X_CANVAS = 128
DEFAULT_NUM_IMAGES = 4096
DEFAULT_IMAGE_SIZE = 32
MIN_IMAGE_SIZE = 8

SKIN_TONES = (
    (255, 224, 196), (241, 194, 160), (224, 172, 128), (198, 134, 98),
    (160, 102, 68), (120, 74, 50), (86, 54, 36), (250, 210, 170),
)
HAIR_COLOURS = (
    (24, 20, 18), (70, 44, 28), (120, 80, 40), (200, 160, 90),
    (170, 70, 30), (150, 150, 150), (235, 235, 225),
)


def _hsv(rng, saturation=(0.2, 0.9), value=(0.3, 1.0)):
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return (255.0 * r, 255.0 * g, 255.0 * b)


def _jitter(rng, colour, amount):
    return tuple(c + d for c, d in zip(colour, rng.uniform(-amount, amount, 3)))


def _rgb(colour):
    return tuple(int(min(255.0, max(0.0, c)) + 0.5) for c in colour)


def _scaled(colour, factor):
    return tuple(c * factor for c in colour)


def _background(rng, side):
    first, second = _hsv(rng), _hsv(rng)
    kind = rng.integers(4)
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side
    if kind == 0:
        return Image.new("RGB", (side, side), _rgb(first))
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        projection = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
        weight = (projection - projection.min()) / (projection.max() - projection.min())
    elif kind == 2:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        distance = np.hypot(coords[None, :] - cx, coords[:, None] - cy)
        weight = np.clip(distance / rng.uniform(0.5, 1.0), 0, 1)
    else:
        horizon = rng.uniform(0.5, 0.85)
        weight = np.broadcast_to(coords[:, None] > horizon, (side, side)).astype(np.float32)
    mask = Image.fromarray(np.round(weight * 255).astype(np.uint8))
    return Image.composite(
        Image.new("RGB", (side, side), _rgb(second)), Image.new("RGB", (side, side), _rgb(first)), mask
    )


def _scatter_shapes(rng, draw, side):
    for _ in range(rng.integers(2, 6)):
        x, y = rng.uniform(0, side, 2)
        r = side * rng.uniform(0.04, 0.12)
        colour = _rgb(_hsv(rng, saturation=(0.3, 1.0), value=(0.4, 1.0)))
        box = (x - r, y - r, x + r, y + r)
        if rng.uniform() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)


def _skin(rng):
    if rng.uniform() < 0.75:
        return _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 12)
    return _hsv(rng, saturation=(0.35, 0.8), value=(0.55, 0.95))


def _hair(rng):
    if rng.uniform() < 0.8:
        return _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 10)
    return _hsv(rng, saturation=(0.6, 1.0), value=(0.5, 1.0))


def _eye(rng, draw, x, y, radius, iris, closed, gaze, width):
    if closed:
        draw.arc((x - radius, y - radius, x + radius, y + radius), 20, 160, fill=(20, 20, 20), width=width)
        return
    draw.ellipse((x - radius, y - 0.8 * radius, x + radius, y + 0.8 * radius), fill=(250, 250, 250))
    pupil = 0.55 * radius
    px, py = x + gaze[0] * 0.35 * radius, y + gaze[1] * 0.25 * radius
    draw.ellipse((px - pupil, py - pupil, px + pupil, py + pupil), fill=_rgb(iris))
    dot = 0.25 * radius
    draw.ellipse((px - dot, py - dot, px + dot, py + dot), fill=(10, 10, 10))


def _mouth(rng, draw, cx, y, half_width, height, width):
    colour = _rgb(_jitter(rng, (150, 40, 50), 40))
    kind = rng.integers(4)
    box = (cx - half_width, y - height, cx + half_width, y + height)
    if kind == 0:
        draw.arc(box, 10, 170, fill=colour, width=width)
    elif kind == 1:
        draw.chord(box, 0, 180, fill=colour)
    elif kind == 2:
        draw.arc((cx - half_width, y, cx + half_width, y + 2 * height), 200, 340, fill=colour, width=width)
    else:
        o = 0.45 * half_width
        draw.ellipse((cx - o, y - 0.8 * o, cx + o, y + 0.8 * o), fill=colour)


def draw_face(seed, index, side):
    """One face on a `side` x `side` canvas, determined by (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    image = _background(rng, side)
    draw = ImageDraw.Draw(image)
    if rng.uniform() < 0.4:
        _scatter_shapes(rng, draw, side)

    cx = side * (0.5 + rng.uniform(-0.12, 0.12))
    cy = side * (0.53 + rng.uniform(-0.08, 0.08))
    rx = side * rng.uniform(0.22, 0.32)
    ry = rx * rng.uniform(1.0, 1.3)
    skin = _skin(rng)
    hair = _hair(rng)
    line = max(1, int(round(side * 0.025)))

    if rng.uniform() < 0.65:
        grow = rng.uniform(1.05, 1.2)
        top = cy - ry * rng.uniform(1.08, 1.22)
        draw.ellipse((cx - grow * rx, top, cx + grow * rx, cy + ry * rng.uniform(0.0, 0.9)), fill=_rgb(hair))
    if rng.uniform() < 0.5:
        er = 0.22 * rx
        for side_sign in (-1, 1):
            ex = cx + side_sign * rx * 0.97
            draw.ellipse((ex - er, cy - 1.2 * er, ex + er, cy + 1.2 * er), fill=_rgb(_scaled(skin, 0.92)))
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_rgb(skin))
    if rng.uniform() < 0.4:
        draw.chord((cx - rx, cy - ry, cx + rx, cy + ry * rng.uniform(-0.6, -0.3)), 180, 360, fill=_rgb(hair))

    eye_y = cy - ry * rng.uniform(0.05, 0.25)
    eye_dx = rx * rng.uniform(0.32, 0.5)
    eye_r = rx * rng.uniform(0.13, 0.22)
    iris = _hsv(rng, saturation=(0.4, 1.0), value=(0.2, 0.7))
    closed = rng.uniform() < 0.12
    gaze = rng.uniform(-1, 1, 2)
    for side_sign in (-1, 1):
        _eye(rng, draw, cx + side_sign * eye_dx, eye_y, eye_r, iris, closed, gaze, line)
    if rng.uniform() < 0.5:
        tilt = rng.uniform(-0.3, 0.3) * eye_r
        brow_y = eye_y - 1.6 * eye_r
        for side_sign in (-1, 1):
            x = cx + side_sign * eye_dx
            draw.line((x - eye_r, brow_y + side_sign * tilt, x + eye_r, brow_y - side_sign * tilt),
                      fill=_rgb(_scaled(hair, 0.8)), width=line)
    if rng.uniform() < 0.15:
        frame = _rgb(_hsv(rng, saturation=(0.0, 0.8), value=(0.05, 0.5)))
        lens = eye_r * 1.5
        for side_sign in (-1, 1):
            x = cx + side_sign * eye_dx
            draw.ellipse((x - lens, eye_y - lens, x + lens, eye_y + lens), outline=frame, width=line)
        draw.line((cx - eye_dx + lens, eye_y, cx + eye_dx - lens, eye_y), fill=frame, width=line)

    if rng.uniform() < 0.5:
        nose = 0.09 * rx
        ny = cy + ry * rng.uniform(0.05, 0.2)
        draw.ellipse((cx - nose, ny - nose, cx + nose, ny + nose), fill=_rgb(_scaled(skin, 0.75)))
    if rng.uniform() < 0.3:
        blush = 0.14 * rx
        by = cy + ry * 0.2
        for side_sign in (-1, 1):
            x = cx + side_sign * rx * 0.58
            draw.ellipse((x - blush, by - blush, x + blush, by + blush), fill=_rgb(_jitter(rng, (235, 120, 130), 15)))
    mouth_y = cy + ry * rng.uniform(0.4, 0.6)
    _mouth(rng, draw, cx, mouth_y, rx * rng.uniform(0.3, 0.55), ry * rng.uniform(0.08, 0.18), line)

    if rng.uniform() < 0.15:
        hat = _rgb(_hsv(rng))
        top = cy - ry * 0.75
        draw.rectangle((cx - 1.25 * rx, top - 0.12 * ry, cx + 1.25 * rx, top + 0.05 * ry), fill=hat)
        draw.rectangle((cx - 0.75 * rx, top - 0.75 * ry, cx + 0.75 * rx, top), fill=hat)
    return image


def canvas_side(image_size):
    # 4x antialiases best; above 128 pixels 2x looks the same and draws several times faster.
    return max(2 * image_size, min(4 * image_size, MAX_4X_CANVAS))


class EmbeddedFacePayload:
    """Picklable recipe for one face; drawn in the worker process."""

    def __init__(self, seed, index, side):
        self.seed, self.index, self.side = seed, index, side

    def materialize(self):
        return self

    def open_image(self):
        return draw_face(self.seed, self.index, self.side)


class EmbeddedSource:
    def __init__(self, seed, num_images, image_size):
        if num_images < 1:
            raise ValueError(f"--num_images must be a positive integer, got {num_images}")
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"--image_size must be at least {MIN_IMAGE_SIZE} for the embedded faces, got {image_size}")
        self.seed, self.num_images, self.image_size = seed, num_images, image_size
        self.description = f"embedded cartoon faces, seed {seed}"

    def __len__(self):
        return self.num_images

    def __iter__(self):
        side = canvas_side(self.image_size)
        for index in range(self.num_images):
            yield SourceItem(
                out_name=f"embedded_{index:06d}.png",
                origin=f"embedded face #{index} (seed {self.seed})",
                payload=EmbeddedFacePayload(self.seed, index, side),
            )


SPEC = DatasetSpec(
    name="embedded",
    expected_count=DEFAULT_NUM_IMAGES,
    default_image_size=DEFAULT_IMAGE_SIZE,
    class_cond=False,
    open_source=None,
    about=f"cartoon faces generated from a seed, no download ({DEFAULT_NUM_IMAGES} at 32x32 by default)",
)
