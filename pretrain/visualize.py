"""Reconstruction figures: original | masked | reconstruction | reconstruction with the visible patches pasted."""
from pathlib import Path
from typing import Optional

import torch
from torchvision.utils import save_image

from maetransfer.data.images import IMAGENET_MEAN, IMAGENET_STD

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


def save_reconstructions(model: MaskedAutoencoderViT, imgs: torch.Tensor, path, mask_ratio: float = 0.75,
                         seed: int = 0) -> Path:
    """One row per image with the four panels; a fixed mask seed makes figures of different epochs comparable."""
    g = torch.Generator().manual_seed(seed)
    grid = (imgs.shape[-2] // model.patch_size) * (imgs.shape[-1] // model.patch_size)
    noise = torch.rand(imgs.shape[0], grid, generator=g).to(imgs.device)
    was_training = model.training
    panels = reconstruct(model, imgs, mask_ratio, noise)
    model.train(was_training)
    rows = torch.stack(panels, dim=1).flatten(0, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows, path, nrow=4, padding=2, pad_value=1.0)
    return path
