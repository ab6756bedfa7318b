"""What every picture for a person shares: distinct colours, the display size, and text tags in a font sized to the
picture, so that labels stay legible on a 64 px demo scene and on a 4000 px photo alike. Boxes and masks are drawn
with torchvision's utilities; text with PIL, whose built-in font scales (torchvision's labels use a fixed 11 px bitmap
font unless given a font file, and none ships with the project)."""
import colorsys
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Images smaller than this (longest side) are enlarged by a whole factor before anything is drawn on them.
MIN_DISPLAY_SIDE = 512

Colour = Tuple[int, int, int]


def distinct_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 colours that differ from their neighbours in the list (golden-ratio hues, alternating
    brightness)."""
    cols = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 if i % 2 == 0 else 0.7) for i in range(n)]
    return (np.array(cols) * 255).round().astype(np.uint8).reshape(n, 3)


def display_size(h: int, w: int, height: Optional[int] = None) -> Tuple[int, int]:
    """(h, w) an image is shown at: `height` px high when given, else enlarged by a whole factor up to
    MIN_DISPLAY_SIDE (each pixel of a small image becomes a square block) and as it is when larger."""
    if height is not None:
        return height, max(1, round(w * height / h))
    zoom = max(1, math.ceil(MIN_DISPLAY_SIDE / max(h, w)))
    return h * zoom, w * zoom


def resize_for_display(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w): nearest neighbour when enlarging (the pixels the model saw), PIL's
    antialiased bilinear when shrinking."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    enlarging = size[0] >= image.shape[1]
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    pil = pil.resize((size[1], size[0]), Image.NEAREST if enlarging else Image.BILINEAR)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def font_size(h: int, w: int) -> int:
    """Text height in px for a picture of h x w: 1/40 of its geometric mean side (13 px at 512 x 512), at least
    13 px."""
    return max(13, round(math.sqrt(h * w) / 40))


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def text_colour(fill: Colour) -> Colour:
    """Black on light fills, white on dark ones (ITU-R BT.601 luma)."""
    return (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 150 else (255, 255, 255)


def draw_tag(draw: ImageDraw.ImageDraw, xy: Tuple[float, float], text: str, fill: Colour,
             text_font: ImageFont.FreeTypeFont, above: bool = True) -> None:
    """`text` on a filled rectangle whose bottom-left corner is `xy` (`above`) or whose top-left corner is `xy`,
    moved inside the picture where it would leave it."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=text_font)
    pad = max(2, text_font.size // 6)
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    width, height = draw.im.size
    x, y = xy
    if above:
        y = y - tag_h if y - tag_h >= 0 else y  # no room above: inside the box's top edge
    x, y = min(max(0, x), max(0, width - tag_w)), min(max(0, y), max(0, height - tag_h))
    draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=fill)
    draw.text((x + pad - left, y + pad - top), text, fill=text_colour(fill), font=text_font)


def draw_legend(entries: Sequence[Tuple[str, Colour]], height: int, text_font: ImageFont.FreeTypeFont,
                background: Colour = (255, 255, 255)) -> Image.Image:
    """A panel `height` px high listing (text, colour) entries as a swatch and the text, in as many columns as it
    takes."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = text_font.size
    line = round(size * 1.5)
    per_column = max(1, (height - size) // line)
    columns: List[Sequence[Tuple[str, Colour]]] = [entries[i:i + per_column]
                                                   for i in range(0, len(entries), per_column)] or [[]]
    widths = [max([int(probe.textlength(text, font=text_font)) for text, _ in column] + [0]) + 2 * size
              for column in columns]
    legend = Image.new("RGB", (sum(widths) + size, height), background)
    draw = ImageDraw.Draw(legend)
    x = size // 2
    for column, width in zip(columns, widths):
        for row, (text, colour) in enumerate(column):
            y = size // 2 + row * line
            draw.rectangle((x, y, x + size - 1, y + size - 1), fill=colour, outline=(0, 0, 0))
            draw.text((x + round(size * 1.4), y), text, fill=(0, 0, 0), font=text_font)
        x += width
    return legend


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    return out


def tile(panels: Sequence[Image.Image], columns: int = 4, gap: int = 6) -> Image.Image:
    """Panels in rows of `columns` on white, each row as high as its highest panel (panels of one height leave no
    blank space but the gaps)."""
    rows = [panels[i:i + columns] for i in range(0, len(panels), columns)]
    width = max(sum(p.width for p in row) + gap * (len(row) - 1) for row in rows)
    height = sum(max(p.height for p in row) for row in rows) + gap * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for row in rows:
        x = 0
        for panel in row:
            canvas.paste(panel, (x, y))
            x += panel.width + gap
        y += max(p.height for p in row) + gap
    return canvas
