"""The detector and its data pipeline against detectron2 itself, with identical weights and inputs: LSJ training
samples (polygons and bitmasks) drawn from the same NumPy seed, the five training losses and their gradients from the
same torch seed, and the detections of the test pipeline. detectron2 has no installable build; it is built from its
source in a separate environment (see benchmarks/compare_detectron2.py), and these tests skip where it is absent."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

detectron2 = pytest.importorskip("detectron2")
pytest.importorskip("detectron2._C")
from detectron2.data import DatasetMapper  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.datasets import load_coco_json  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from benchmarks.compare_detectron2 import confident_heads, detectron2_model  # noqa: E402
from benchmarks.compare_detectron2 import main as compare  # noqa: E402
from maetransfer.checkpoint import to_detectron2_detector  # noqa: E402
from maetransfer.config import load_config  # noqa: E402
from maetransfer.data.coco import CocoDetection, LargeScaleJitter, write_demo_coco  # noqa: E402
from maetransfer.data.demo import render_scenes  # noqa: E402
from maetransfer.data.instances import polygons_to_bitmask  # noqa: E402
from maetransfer.det.model import build_mask_rcnn  # noqa: E402

VITDET_CONFIG = Path(detectron2.__file__).resolve().parents[1] / "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py"
if not VITDET_CONFIG.is_file():
    pytest.skip("detectron2 source tree with projects/ViTDet not found", allow_module_level=True)


def _star(cx, cy, r, n, rng):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.3, 1.0, n)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).reshape(-1).round(2).tolist()


def _polygon_coco(root: Path, count=6, seed=0) -> Path:
    """Photos-sized images with concave many-vertex polygons, some of two parts, some crossing the border."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        h, w = int(rng.integers(120, 260)), int(rng.integers(120, 260))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        for _ in range(int(rng.integers(1, 6))):
            parts = [_star(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 60), int(rng.integers(5, 14)), rng)
                     for _ in range(int(rng.integers(1, 3)))]
            xs, ys = np.concatenate([p[0::2] for p in parts]), np.concatenate([p[1::2] for p in parts])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0,
                                "category_id": int(rng.choice([2, 5, 9])), "segmentation": parts, "area": 1.0,
                                "bbox": [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": c, "name": f"c{c}"} for c in (2, 5, 9)]}))
    return path


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_lsj_samples_equal_detectron2_dataset_mapper(tmp_path, mask_format):
    if mask_format == "polygon":
        ann_file, image_dir = _polygon_coco(tmp_path), tmp_path / "images"
    else:
        root = write_demo_coco(tmp_path / "demo", num_train=6, num_val=1, size=96, max_shapes=4)
        ann_file, image_dir = root / "annotations" / "instances_train2017.json", root / "train2017"
    size = 128
    ours = CocoDetection(image_dir, ann_file, transforms=LargeScaleJitter(size, (0.1, 2.0), 0.5))
    dicts = {d["image_id"]: d for d in load_coco_json(str(ann_file), str(image_dir), f"oracle_{tmp_path.name}")}
    mapper = DatasetMapper(is_train=True, image_format="RGB", use_instance_mask=True, recompute_boxes=True,
                           instance_mask_format=mask_format, augmentations=[
                               T.RandomFlip(horizontal=True), T.ResizeScale(0.1, 2.0, size, size),
                               T.FixedSizeCrop((size, size), pad=False)])
    for index, image_id in enumerate(ours.ids):
        for seed in range(8):
            np.random.seed(seed)
            reference = mapper(dict(dicts[image_id]))
            np.random.seed(seed)
            image, target = ours[index]
            assert torch.equal(image, reference["image"])
            inst = reference["instances"]
            assert target["labels"].tolist() == inst.gt_classes.tolist()
            torch.testing.assert_close(target["boxes"], inst.gt_boxes.tensor, rtol=0, atol=1e-4)
            if mask_format == "polygon":
                for mine, theirs in zip(target["masks"], inst.gt_masks.polygons):
                    assert len(mine) == len(theirs)
                    for a, b in zip(mine, theirs):
                        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
            else:
                assert torch.equal(target["masks"].bool(), inst.gt_masks.tensor)


def _models(tmp_path, *overrides):
    cfg = load_config("configs/det/demo.yaml", ["train.init_checkpoint=", "model.drop_path_rate=0.0", *overrides])
    torch.manual_seed(0)
    ours = build_mask_rcnn(cfg, 3)
    confident_heads(ours, 0)
    weights = tmp_path / "vitdet.pth"
    torch.save(to_detectron2_detector(ours.state_dict(), "ours"), weights)
    return cfg, ours, detectron2_model(str(VITDET_CONFIG), cfg, 3, weights)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_training_losses_and_gradients_equal_detectron2(tmp_path, mask_format):
    _, ours, reference = _models(tmp_path)
    ours.train()
    reference.train()
    ann_file = _polygon_coco(tmp_path / "data", count=2, seed=1)
    data = CocoDetection(tmp_path / "data" / "images", ann_file, transforms=LargeScaleJitter(128, (0.5, 1.5), 0.5))
    np.random.seed(0)
    samples = [data[0], data[1]]
    if mask_format == "bitmask":  # the (N, H, W) uint8 targets of images with RLE instances
        samples = [(image, dict(target, masks=torch.from_numpy(np.stack(
            [polygons_to_bitmask(p, *image.shape[1:]) for p in target["masks"]]).astype(np.uint8))))
                   for image, target in samples]
    inputs = []
    for image, target in samples:
        masks = PolygonMasks(target["masks"]) if mask_format == "polygon" else BitMasks(target["masks"])
        inst = Instances(tuple(image.shape[1:]), gt_boxes=Boxes(target["boxes"]), gt_classes=target["labels"],
                         gt_masks=masks)
        inputs.append({"image": image, "instances": inst})
    for seed in range(3):
        ours.zero_grad()
        reference.zero_grad()
        torch.manual_seed(seed)
        with EventStorage() as storage:
            theirs = reference(inputs)
        torch.manual_seed(seed)
        outputs = ours([s[0] for s in samples], [s[1] for s in samples])
        mine = {k: v for k, v in outputs.items() if k.startswith("loss_")}
        assert set(mine) == set(theirs)
        # the training diagnostics detectron2 puts in its event storage: same names, same values
        their_stats = {k: v[0] for k, v in storage.latest().items()
                       if k.split("/")[0] in ("rpn", "roi_head", "fast_rcnn", "mask_rcnn")}
        our_stats = {k: v for k, v in outputs.items() if k not in mine}
        assert set(our_stats) == set(their_stats) and len(our_stats) == 10
        for key, value in their_stats.items():
            assert our_stats[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)
        # gradients of every parameter, relative to the largest of each tensor: the box and RPN losses agree to
        # float rounding; the mask loss adds a few ReLU kinks that the 1e-5 rounding of the features flips
        boxes_only = [k for k in theirs if k != "loss_mask"]
        for losses, tol in ((boxes_only, 1e-3), (list(theirs), 2e-2)):
            ours.zero_grad()
            reference.zero_grad()
            sum(mine[k] for k in losses).backward(retain_graph=True)
            sum(theirs[k] for k in losses).backward(retain_graph=True)
            their_params = dict(reference.named_parameters())
            for name, param in ours.named_parameters():
                expected = their_params[name].grad
                if expected is None:  # not reached by these losses (the mask head for the box losses)
                    assert param.grad is None, name
                    continue
                assert (param.grad - expected).abs().max() <= tol * expected.abs().max() + 1e-9, (losses, name)


def test_detections_equal_detectron2(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, (pixels, _) in enumerate(render_scenes(4, 160, seed=5, max_shapes=5)):
        # non-square sizes, shrunk and enlarged by the test resize
        Image.fromarray(pixels[: 100 + 20 * i]).save(images / f"{i}.png")
    summary = compare(["--images", str(images), "--vitdet-config", str(VITDET_CONFIG), "--config",
                       "configs/det/demo.yaml", "--num-classes", "3", "train.init_checkpoint=",
                       "model.detections_per_img=50"])
    assert summary["reference"] >= 150 and summary["matched"] >= 0.99 * summary["reference"]
    assert summary["score_close"] >= 0.99 * summary["reference"] and summary["mask_iou_median"] >= 0.95

def test_a_checkpoint_written_by_detectron2_loads_bit_exact(tmp_path):
    """detectron2's own DetectionCheckpointer writes a freshly initialised ViTDet; `--eval-only`'s loader reads it
    into our detector with every tensor equal, and our export writes it back unchanged."""
    from detectron2.checkpoint import DetectionCheckpointer

    from maetransfer.checkpoint import read_state, save_detectron2_detector
    from maetransfer.det.train import load_detector

    cfg, ours, _ = _models(tmp_path)
    torch.manual_seed(1)
    reference = detectron2_model(str(VITDET_CONFIG), cfg, 3, tmp_path / "vitdet.pth")
    for p in reference.parameters():  # detectron2's own weights, not ours
        torch.nn.init.normal_(p, std=0.02)
    DetectionCheckpointer(reference, save_dir=str(tmp_path)).save("model_final")
    load_detector(ours, str(tmp_path / "model_final.pth"))
    theirs = reference.state_dict()
    mine = ours.state_dict()
    assert set(theirs) - {"pixel_mean", "pixel_std"} == set(mine) - {"pixel_mean", "pixel_std"}
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if k in theirs)
    save_detectron2_detector(mine, tmp_path / "back.pth", "ours")
    back, _ = read_state(tmp_path / "back.pth")
    assert all(torch.equal(back[k], theirs[k]) for k in back)
