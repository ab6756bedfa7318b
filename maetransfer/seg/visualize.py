"""Label maps drawn for a person: class colours (a data set's own palette, mmseg's palette for ADE20K's 150 classes,
distinct colours for other data), a colour overlay on the image, and a legend of the classes present."""
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.ade import ADE20K_CLASSES, ADE20K_PALETTE
from ..drawing import display_size, distinct_colours, draw_legend, font, font_size, resize_for_display, side_by_side


def class_colours(class_names: Sequence[str], palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """(K, 3) uint8: `palette` when given (a data set's own, `data.palette`; a trained model's checkpoint meta
    'palette'), else ADE20K's palette for its 150 classes, else distinct colours (`drawing.distinct_colours`, where
    mmseg draws a random palette: the same classes get the same colours in every run)."""
    if palette is not None and len(palette):
        colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(colours) != len(class_names):
            raise ValueError(f"a palette of {len(colours)} colours for {len(class_names)} classes")
        return colours
    if tuple(class_names) == ADE20K_CLASSES:
        return np.array(ADE20K_PALETTE, dtype=np.uint8)
    return distinct_colours(len(class_names))


def colorize(label: np.ndarray, colours: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) RGB; ignored pixels black."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    keep = label != ignore_index
    out[keep] = colours[label[keep]]
    return out


def legend_entries(label: np.ndarray, class_names: Sequence[str], colours: np.ndarray, ignore_index: int = 255):
    """(name and share of the pixels, colour) of every class in `label`, the largest first."""
    values, counts = np.unique(label[label != ignore_index], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(f"{class_names[values[i]]} {100 * counts[i] / label.size:.1f}%", tuple(int(c) for c in colours[values[i]]))
            for i in order]


def draw_segmentation(image: torch.Tensor, label: torch.Tensor, class_names: Sequence[str],
                      colours: Optional[np.ndarray] = None, opacity: float = 0.5,
                      height: Optional[int] = None) -> Image.Image:
    """`image` (uint8 (3, H, W)) with the class colours of `label` ((H, W) class indices) blended in at `opacity`,
    shown at `drawing.display_size(H, W, height)`, and the classes present listed on the right by their share of the
    pixels."""
    colours = class_colours(class_names) if colours is None else colours
    label = label.cpu().numpy()
    h, w = label.shape
    size = display_size(h, w, height)
    coloured = torch.from_numpy(colorize(label, colours)).permute(2, 0, 1)
    blend = (1 - opacity) * resize_for_display(image, size).float() + opacity * resize_for_display(coloured, size)
    overlay = Image.fromarray(blend.round().to(torch.uint8).permute(1, 2, 0).numpy())
    legend = draw_legend(legend_entries(label, class_names, colours), size[0], font(font_size(*size)))
    return side_by_side(overlay, legend)
