"""A classifier's top labels written on the image, for a person (tools/predict.py)."""
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw

from ..drawing import display_size, draw_tag, font, font_size, resize_for_display


def draw_topk(image: torch.Tensor, labels: Sequence[int], scores: Sequence[float], class_names: Sequence[str],
              height: Optional[int] = None) -> Image.Image:
    """`image` (uint8 (3, H, W)) shown at `drawing.display_size(H, W, height)` with one line per label in the
    top-left corner: rank, class name and probability, the first on a white tag and the others on grey ones."""
    size = display_size(*image.shape[1:], height)
    picture = Image.fromarray(resize_for_display(image, size).permute(1, 2, 0).numpy())
    draw, text_font = ImageDraw.Draw(picture), font(font_size(*size))
    y = 0
    for rank, (label, score) in enumerate(zip(labels, scores), 1):
        text = f"{rank}. {class_names[int(label)]} {100 * float(score):.1f}%"
        draw_tag(draw, (0, y), text, (255, 255, 255) if rank == 1 else (200, 200, 200), text_font, above=False)
        y += round(text_font.size * 1.6)
    return picture
