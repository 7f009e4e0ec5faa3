"""Side-by-side figures of teacher and student predictions: colour-mapped masks, depth maps and boxes (matplotlib,
Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from jetvit.tasks.datasets import IGNORE


def palette(num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colours: distinct, deterministic colours for class ids, black for everything else (ignore)."""
    import colorsys

    colours = np.zeros((256, 3), dtype=np.uint8)
    for c in range(min(num_classes, 255)):
        # Golden-ratio hue steps keep neighbouring ids apart; three brightness levels double the distinct colours.
        hue = (c * 0.618033988749895) % 1.0
        value = (1.0, 0.75, 0.5)[c % 3]
        colours[c] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.75, value)) * 255)
    return colours


def colour_mask(mask: Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class ids (IGNORE = black) -> (H, W, 3) uint8."""
    m = np.asarray(mask).astype(np.int64)
    m = np.where((m >= 0) & (m < num_classes), m, IGNORE)
    return palette(num_classes)[m]


def colour_depth(
    depth: Tensor | np.ndarray, *, vmin: float, vmax: float, cmap: str = "Spectral_r", zero_is_invalid: bool = False
) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through a matplotlib colour map. Non-finite values are black, and so are
    values <= 0 when `zero_is_invalid` (ground truth without a measurement; a prediction's 0 is a real value)."""
    from matplotlib import colormaps

    d = np.asarray(depth, dtype=np.float64)
    scaled = np.clip((d - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    rgb = (colormaps[cmap](np.nan_to_num(scaled))[..., :3] * 255).astype(np.uint8)
    invalid = ~np.isfinite(d)
    if zero_is_invalid:
        invalid |= d <= 0
    rgb[invalid] = 0
    return rgb


def robust_range(*maps: Tensor | np.ndarray) -> tuple[float, float]:
    """2nd and 98th percentiles of the finite, positive values of all maps: one shared colour scale."""
    values = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def save_panels(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray]], *, title: str = "") -> None:
    """Write one row of titled RGB panels (each (H, W, 3) uint8 or float in [0, 1]) as a PNG, atomically."""
    from matplotlib.figure import Figure

    from jetvit.io import atomic_write

    h, w = panels[0][1].shape[:2]
    scale = 3.0 / max(h, w)
    fig = Figure(figsize=(len(panels) * w * scale + 0.2, h * scale + 0.5))
    for i, (name, rgb) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def save_box_panels(
    path: str | os.PathLike,
    image: np.ndarray,
    panels: Sequence[tuple[str, Sequence[Sequence[float]], Sequence[int], Sequence[str]]],
    *,
    num_colours: int,
) -> None:
    """Write one row of panels of the same image (H, W, 3), each with its boxes, as a PNG, atomically. A panel is
    (title, boxes [[x, y, w, h], ...] in pixels, a colour index per box (its category), a caption per box)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from jetvit.io import atomic_write

    h, w = image.shape[:2]
    scale = 4.0 / max(h, w)
    colours = palette(num_colours) / 255.0
    fig = Figure(figsize=(len(panels) * w * scale + 0.2, h * scale + 0.5))
    for i, (name, boxes, colour_ids, captions) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        ax.imshow(image, interpolation="nearest")
        for (x, y, bw, bh), c, caption in zip(boxes, colour_ids, captions):
            colour = colours[c % 255]
            # Pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates; a box's corner x is a pixel edge.
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, edgecolor=colour, linewidth=1.2))
            if caption:
                ax.text(x - 0.5, y - 0.5, caption, color="white", fontsize=6, va="bottom",
                        bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5})  # fmt: skip
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def image_rgb(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
