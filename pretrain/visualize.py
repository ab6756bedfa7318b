"""Reconstruction figures: original | masked | reconstruction | reconstruction with the visible patches pasted, one
row per image, columns labelled, small images upscaled so that a person can read them."""
import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from maetransfer.data.images import IMAGENET_MEAN, IMAGENET_STD
from maetransfer.files import atomic_write

from .models_mae import MaskedAutoencoderViT


@torch.no_grad()
def reconstruct(model: MaskedAutoencoderViT, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: Optional[torch.Tensor] = None):
    """Normalised images (N, 3, H, W) -> (original, masked, reconstruction, pasted), all in pixel space [0, 1].

    A norm-pix model predicts each patch normalised by its own mean/std; those statistics are taken from the
    original patch to show the prediction as pixels (what the official demo does for such checkpoints).
    """
    model.eval()
    _, pred, mask = model(imgs, mask_ratio, noise)
    if model.norm_pix_loss:
        target = model.patchify(imgs)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    grid = (imgs.shape[-2] // model.patch_size, imgs.shape[-1] // model.patch_size)
    recon = model.unpatchify(pred.float(), grid)
    mask_img = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, model.patch_size ** 2 * 3), grid)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def to_pixels(x):
        return (x.cpu() * std + mean).clamp(0, 1)

    original, recon, mask_img = to_pixels(imgs), to_pixels(recon), mask_img.cpu()
    masked = original * (1 - mask_img) + 0.5 * mask_img
    pasted = original * (1 - mask_img) + recon * mask_img
    return original, masked, recon, pasted


MIN_TILE = 192   # panels smaller than this are enlarged by a whole factor (nearest neighbour keeps patches sharp)
PADDING = 4
HEADER = 28      # the band above the panels that names the columns


def figure_layout(image_size: int) -> tuple:
    """(upscale factor, tile size) of a square `image_size` panel in the figure."""
    factor = max(1, math.ceil(MIN_TILE / image_size))
    return factor, image_size * factor


def save_reconstructions(model: MaskedAutoencoderViT, imgs: torch.Tensor, path, mask_ratio: float = 0.75,
                         seed: int = 0) -> Path:
    """One row per image with the four panels under a header naming them; a fixed mask seed makes figures of
    different checkpoints comparable."""
    g = torch.Generator().manual_seed(seed)
    grid = (imgs.shape[-2] // model.patch_size) * (imgs.shape[-1] // model.patch_size)
    noise = torch.rand(imgs.shape[0], grid, generator=g).to(imgs.device)
    was_training = model.training
    panels = reconstruct(model, imgs, mask_ratio, noise)
    model.train(was_training)
    factor, _ = figure_layout(max(imgs.shape[-2:]))
    tiles = F.interpolate(torch.stack(panels, dim=1).flatten(0, 1), scale_factor=factor, mode="nearest")
    body = make_grid(tiles, nrow=4, padding=PADDING, pad_value=1.0).mul(255).round().byte()
    figure = Image.new("RGB", (body.shape[2], body.shape[1] + HEADER), "white")
    figure.paste(Image.fromarray(body.permute(1, 2, 0).numpy()), (0, HEADER))
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default(size=14)
    column = tiles.shape[-1] + PADDING
    labels = ("original", f"masked {mask_ratio:.0%}", "reconstruction", "reconstruction + visible")
    for i, label in enumerate(labels):
        draw.text((PADDING + i * column + tiles.shape[-1] / 2, HEADER / 2), label, fill="black", font=font,
                  anchor="mm")
    return atomic_write(path, lambda tmp: figure.save(tmp, format="PNG"))


def preview_indices(files: Sequence[Path], count: int) -> List[int]:
    """Indices of `count` images spread over the classes of an ImageFolder tree (files grouped by folder): one image
    of each of `count` evenly spaced classes, or several evenly spaced images per class when there are fewer
    classes; a flat folder gives evenly spaced images."""
    by_class = {}
    for i, f in enumerate(files):
        by_class.setdefault(Path(f).parent, []).append(i)
    per_class = math.ceil(count / len(by_class))
    candidates = [group[int(j)] for group in by_class.values()
                  for j in np.linspace(0, len(group) - 1, min(per_class, len(group))).round()]
    count = min(count, len(candidates))
    return [candidates[int(j)] for j in np.linspace(0, len(candidates) - 1, count).round()]
