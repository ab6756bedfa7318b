"""Test-time inference with mmseg semantics: whole-image, sliding window, multi-scale + flip.

Sliding window (mmseg EncoderDecoder.slide_inference): windows of `crop` every `stride`, the last row/column moved
back to end at the border (windows larger than the image shrink to it), logits of every window summed into the
full-size map and divided by the per-pixel window count. Windows are batched for throughput, which changes nothing
numerically (the model is in eval mode). Multi-scale + flip: softmax scores of every view, each resized back to the
original size, averaged (mmseg aug_test / SegTTAModel).
"""
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..data.ade import normalize, resize_image, view_size


def slide_windows(h: int, w: int, crop: Sequence[int], stride: Sequence[int]) -> Iterator[Tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window, in mmseg's order."""
    (ch, cw), (sh, sw) = crop, stride
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            yield max(y2 - ch, 0), y2, max(x2 - cw, 0), x2


def slide_inference(encode_decode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, num_classes: int,
                    crop: Sequence[int], stride: Sequence[int], batch: int = 8) -> torch.Tensor:
    """images (B, 3, H, W) -> logits (B, num_classes, H, W) averaged over overlapping windows.
    `encode_decode` maps a (N, 3, h, w) batch to logits at (h, w)."""
    B, _, H, W = images.shape
    preds = images.new_zeros((B, num_classes, H, W), dtype=torch.float32)
    count = images.new_zeros((B, 1, H, W), dtype=torch.float32)
    windows = list(slide_windows(H, W, crop, stride))
    for start in range(0, len(windows), max(1, batch // B)):
        group = windows[start:start + max(1, batch // B)]
        crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group])
        logits = encode_decode(crops).float().split(B)
        for (y1, y2, x1, x2), logit in zip(group, logits):
            preds[:, :, y1:y2, x1:x2] += logit
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def inference(model, images: torch.Tensor, mode: str = "slide", crop: Sequence[int] = (512, 512),
              stride: Sequence[int] = (341, 341), batch: int = 8) -> torch.Tensor:
    """Logits at the input size by 'slide' or 'whole' inference; `model` has `encode_decode` and `num_classes`."""
    if mode == "slide":
        return slide_inference(model.encode_decode, images, model.num_classes, crop, stride, batch)
    if mode == "whole":
        return model.encode_decode(images).float()
    raise ValueError(f"unknown eval.mode '{mode}': expected slide or whole")


@torch.no_grad()
def predict(model, image: torch.Tensor, eval_cfg, scale: Sequence[int], mean: Sequence[float],
            std: Sequence[float], device: Optional[torch.device] = None) -> torch.Tensor:
    """Scores (num_classes, H0, W0) on `device` (default: the image's) for one uint8 image (3, H0, W0) at its
    original size.

    Each view: resize to the (long, short) bound `scale` x ratio keeping the aspect ratio (uint8, OpenCV on the CPU,
    as mmseg's mmcv.imrescale), move to `device`, normalise, optionally flip, infer, flip back, resize the logits
    bilinearly to the original size. One view returns its logits; several return the mean of their softmax scores.
    """
    device = image.device if device is None else device
    h0, w0 = image.shape[-2:]
    ratios: List[float] = list(eval_cfg.ratios) if eval_cfg.multi_scale else [1.0]
    flips = [False, True] if eval_cfg.flip else [False]
    min_size: Optional[int] = eval_cfg.min_size if eval_cfg.multi_scale else None
    scores = None
    for ratio in ratios:
        size = view_size(h0, w0, tuple(scale), ratio, min_size)
        x = normalize(resize_image(image, size).to(device), mean, std)[None]
        for flip in flips:
            logits = inference(model, x.flip(-1) if flip else x, eval_cfg.mode, tuple(eval_cfg.crop_size),
                               tuple(eval_cfg.stride), int(eval_cfg.slide_batch))
            if flip:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)[0]
            if len(ratios) * len(flips) == 1:
                return logits
            probs = logits.softmax(0)
            scores = probs if scores is None else scores + probs
    return scores / (len(ratios) * len(flips))
