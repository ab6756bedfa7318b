"""A PNG of detections on a few validation images, for a person to look at after a run."""
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from ..data.coco import CocoDetection


@torch.no_grad()
def save_predictions(model: torch.nn.Module, dataset: CocoDetection, path, num_images: int = 8,
                     score_thresh: float = 0.3, min_side: int = 256) -> Path:
    """Boxes, class names, scores and masks of detections above `score_thresh` on the first images of `dataset` (as
    its transform gives them to the network)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    panels = []
    for index in range(min(num_images, len(dataset))):
        image, _ = dataset[index]
        out = model([image.to(device)])[0]
        keep = out["scores"] >= score_thresh
        # Small images (the demo's) are enlarged so that the labels stay readable.
        zoom = max(1, -(-min_side // max(image.shape[1:])))
        canvas = F.interpolate(image[None].float(), scale_factor=zoom, mode="nearest")[0].to(torch.uint8).cpu()
        if keep.any():
            masks = F.interpolate(out["masks"][keep, None].float().cpu(), scale_factor=zoom, mode="nearest")[:, 0]
            canvas = draw_segmentation_masks(canvas, masks > 0, alpha=0.45)
            labels = [f"{dataset.category_names[int(l)]} {float(s):.2f}"
                      for l, s in zip(out["labels"][keep], out["scores"][keep])]
            canvas = draw_bounding_boxes(canvas, out["boxes"][keep].cpu() * zoom, labels=labels, width=2)
        panels.append(canvas)
    model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = max(max(p.shape[1:]) for p in panels)
    panels = [F.pad(p, (0, size - p.shape[2], 0, size - p.shape[1])) for p in panels]
    grid = make_grid(panels, nrow=min(4, len(panels)), padding=2)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path
