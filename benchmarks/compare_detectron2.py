"""Side by side with detectron2's own ViTDet Mask R-CNN: the same weights and the same photos through both stacks.

detectron2 is an oracle here, never a dependency: build it from its source in a separate virtual environment that
also sees this project (e.g. `pip install --no-build-isolation -e detectron2/` there, then run this script with
`PYTHONPATH=.`). The script builds our detector from a config, gives its heads weights that make confident,
well-separated predictions (an untrained head scores every box alike, which would only compare tie-breaking), writes
them with `to_detectron2_detector`, loads that file into detectron2's LazyConfig model with strict=True (every key
name and shape must agree), runs both stacks' test pipelines (detectron2: DatasetMapper + ResizeShortestEdge; ours:
CocoDetection's reader + ResizeShortestEdge) on every image of a folder in fp32, and prints per stage how far they
are apart and how many of detectron2's detections ours finds again.

    PYTHONPATH=. python benchmarks/compare_detectron2.py --images photos/ \\
        --vitdet-config detectron2/projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import box_iou

from maetransfer.checkpoint import to_detectron2_detector
from maetransfer.config import load_config
from maetransfer.data.coco import ResizeShortestEdge
from maetransfer.det.model import build_mask_rcnn

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def confident_heads(model: torch.nn.Module, seed: int) -> None:
    """Re-draw the output layers with larger weights, as a trained detector's are: objectness and class logits that
    differ by several units, box deltas of a few percent, masks with clear inside and outside."""
    g = torch.Generator().manual_seed(seed)
    for name, std in (("proposal_generator.rpn_head.objectness_logits", 0.3),
                      ("proposal_generator.rpn_head.anchor_deltas", 0.02),
                      ("roi_heads.box_predictor.cls_score", 0.15), ("roi_heads.box_predictor.bbox_pred", 0.02),
                      ("roi_heads.mask_head.predictor", 0.1)):
        layer = model.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * std)


def detectron2_model(cfg_path: str, ours_cfg, num_classes: int, weights: Path):
    """detectron2's ViTDet LazyConfig model set to our config's architecture, loaded strictly from `weights`."""
    from detectron2.config import LazyConfig, instantiate
    d2 = LazyConfig.load(cfg_path)
    m, net = ours_cfg.model, d2.model.backbone.net
    vit = build_mask_rcnn(ours_cfg, num_classes).backbone.net
    net.update(img_size=m.img_size, patch_size=vit.patch_size, embed_dim=vit.embed_dim, depth=vit.depth,
               num_heads=vit.num_heads, drop_path_rate=m.drop_path_rate, window_size=m.window_size,
               window_block_indexes=[i for i in range(vit.depth) if i not in set(m.global_blocks)],
               pretrain_img_size=m.pretrain_img_size)
    d2.model.backbone.update(out_channels=m.out_channels, scale_factors=tuple(m.scale_factors), square_pad=m.img_size)
    strides = [int(vit.patch_size / s) for s in m.scale_factors]
    strides.append(strides[-1] * 2)
    levels = [f"p{int(np.log2(s))}" for s in strides]
    rpn = d2.model.proposal_generator
    rpn.in_features = levels
    rpn.head.in_channels = m.out_channels
    rpn.head.conv_dims = [-1] * m.rpn_convs
    rpn.anchor_generator.update(sizes=[[s] for s in m.anchor_sizes], aspect_ratios=list(m.aspect_ratios),
                                strides=strides)
    rpn.update(pre_nms_topk=(m.rpn_pre_nms_top_n_train, m.rpn_pre_nms_top_n_test),
               post_nms_topk=(m.rpn_post_nms_top_n_train, m.rpn_post_nms_top_n_test),
               batch_size_per_image=m.rpn_batch_size_per_image, smooth_l1_beta=m.smooth_l1_beta)
    roi = d2.model.roi_heads
    roi.num_classes = num_classes
    roi.batch_size_per_image = m.box_batch_size_per_image
    roi.box_in_features = roi.mask_in_features = levels[:-1]
    scales = tuple(1.0 / s for s in strides[:-1])
    roi.box_pooler.update(output_size=m.box_pool_size, scales=scales)
    roi.mask_pooler.update(output_size=m.mask_pool_size, scales=scales)
    roi.box_head.input_shape.channels = roi.mask_head.input_shape.channels = m.out_channels
    roi.box_head.input_shape.height = roi.box_head.input_shape.width = m.box_pool_size
    roi.mask_head.input_shape.height = roi.mask_head.input_shape.width = m.mask_pool_size
    roi.box_head.conv_dims = [m.head_dim] * m.box_head_convs
    roi.box_head.fc_dims = [m.box_fc_dim]
    roi.mask_head.conv_dims = [m.head_dim] * (m.mask_head_convs + 1)
    roi.box_predictor.input_shape.channels = m.box_fc_dim
    roi.box_predictor.update(test_score_thresh=m.box_score_thresh, test_nms_thresh=m.box_nms_thresh,
                             test_topk_per_image=m.detections_per_img, smooth_l1_beta=m.smooth_l1_beta)
    d2.model.pixel_mean, d2.model.pixel_std = list(ours_cfg.data.mean), list(ours_cfg.data.std)
    model = instantiate(d2.model).eval()
    model.backbone.top_block.in_feature = levels[-2]  # the max-pool level follows the last stage (detectron2: "p5")
    model.load_state_dict(torch.load(weights, weights_only=True)["model"], strict=True)
    return model


def match(ref: Dict, ours: Dict, iou_min: float, score_tol: float) -> Dict:
    """Greedy one-to-one matching of the reference detections (best first) to ours of the same class."""
    n = len(ref["boxes"])
    found, close, mask_ious, score_diffs = 0, 0, [], []
    if n and len(ours["boxes"]):
        ious = box_iou(ref["boxes"], ours["boxes"])
        ious[ref["labels"][:, None] != ours["labels"][None, :]] = -1
        taken = torch.zeros(len(ours["boxes"]), dtype=torch.bool)
        for i in range(n):
            row = ious[i].masked_fill(taken, -1)
            j = int(row.argmax())
            if row[j] < iou_min:
                continue
            taken[j] = True
            found += 1
            diff = abs(float(ref["scores"][i]) - float(ours["scores"][j]))
            score_diffs.append(diff)
            close += diff <= score_tol
            a, b = ref["masks"][i], ours["masks"][j]
            union = (a | b).sum().item()
            mask_ious.append((a & b).sum().item() / union if union else 1.0)
    return {"reference": n, "ours": len(ours["boxes"]), "matched": found, "score_close": close,
            "mask_ious": mask_ious, "score_diffs": score_diffs}


@torch.no_grad()  # not set_grad_enabled(False): main() also runs inside the oracle tests' process
def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of photos (jpg/png)")
    parser.add_argument("--vitdet-config", required=True, help="detectron2 projects/ViTDet/configs/COCO/"
                                                               "mask_rcnn_vitdet_b_100ep.py")
    parser.add_argument("--config", default="configs/det/mask_rcnn_vit_base_coco.yaml")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iou", type=float, default=0.99, help="box IoU that counts as the same detection")
    parser.add_argument("--score-tol", type=float, default=1e-4)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.img_size=512")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, ["model.drop_path_rate=0.0", *args.overrides])
    torch.manual_seed(args.seed)
    ours = build_mask_rcnn(cfg, args.num_classes).eval()
    confident_heads(ours, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vitdet.pth"
        torch.save(to_detectron2_detector(ours.state_dict(), "our detector"), weights)
        reference = detectron2_model(args.vitdet_config, cfg, args.num_classes, weights)

    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T
    size = int(cfg.model.img_size)
    mapper = DatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(size, size)], image_format="RGB")
    resize = ResizeShortestEdge(size, size)
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    totals: List[Dict] = []
    print(f"{'image':<28} {'size':>10} {'input':>9} {'features':>9} {'d2 dets':>7} {'ours':>5} {'matched':>7} "
          f"{'score ok':>8} {'mask IoU med':>12} {'d2 s':>6} {'ours s':>6}")
    for path in paths:
        image = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        h, w = image.shape[1:]
        d2_input = mapper({"file_name": str(path), "height": h, "width": w, "image_id": 0})
        ours_input, _ = resize(image, {})
        input_diff = (d2_input["image"].int() - ours_input.int()).abs().max().item()
        t0 = time.perf_counter()
        d2_out = reference([d2_input])[0]["instances"]
        t1 = time.perf_counter()
        out = ours([ours_input], output_sizes=[(h, w)])[0]
        t2 = time.perf_counter()
        d2_features = reference.backbone(reference.preprocess_image([d2_input]).tensor)
        features = ours.backbone(ours.preprocess([ours_input])[0])
        feature_diff = max((features[k] - d2_features[k]).abs().max().item() for k in features)
        ref = {"boxes": d2_out.pred_boxes.tensor, "scores": d2_out.scores, "labels": d2_out.pred_classes,
               "masks": d2_out.pred_masks}
        stats = match(ref, out, args.iou, args.score_tol)
        totals.append(stats)
        median = statistics.median(stats["mask_ious"]) if stats["mask_ious"] else float("nan")
        print(f"{path.name[:28]:<28} {f'{w}x{h}':>10} {input_diff:>9d} {feature_diff:>9.1e} {stats['reference']:>7d} "
              f"{stats['ours']:>5d} {stats['matched']:>7d} {stats['score_close']:>8d} {median:>12.4f} "
              f"{t1 - t0:>6.1f} {t2 - t1:>6.1f}")
    summary = {k: sum(t[k] for t in totals) for k in ("reference", "ours", "matched", "score_close")}
    ious = [v for t in totals for v in t["mask_ious"]]
    diffs = [v for t in totals for v in t["score_diffs"]]
    summary["mask_iou_median"] = statistics.median(ious) if ious else float("nan")
    summary["mask_iou_min"] = min(ious) if ious else float("nan")
    summary["max_score_diff"] = max(diffs) if diffs else float("nan")
    print(f"total: detectron2 {summary['reference']} detections, ours {summary['ours']}; matched (same class, box "
          f"IoU >= {args.iou}) {summary['matched']} = {100 * summary['matched'] / max(summary['reference'], 1):.2f}%; "
          f"score within {args.score_tol}: {summary['score_close']}; max score difference "
          f"{summary['max_score_diff']:.2e}; mask IoU median {summary['mask_iou_median']:.4f}, min "
          f"{summary['mask_iou_min']:.4f}")
    return summary


if __name__ == "__main__":
    main()
