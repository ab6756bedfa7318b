"""COCO loading (polygon / RLE / crowd / empty images / non-contiguous ids) against pycocotools itself, LSJ geometry
against hand-computed masks, the demo writer and the one-line errors for bad files."""
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from maetransfer.data.coco import (CocoDetection, CocoFormatError, LargeScaleJitter, load_coco_json,
                                   write_demo_coco)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE written out by hand: column-major runs starting with a run of zeros."""
    flat = mask.flatten(order="F").tolist()
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_tiny_coco(root, with_images=True):
    """Three images (48x64, 40x40, 32x48), categories 3/7/12, a polygon, an uncompressed RLE, a compressed RLE, a
    crowd region and an image with no annotation."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "imgs").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images = [{"id": 10, "file_name": "a.png", "height": 48, "width": 64},
              {"id": 20, "file_name": "b.png", "height": 40, "width": 40},
              {"id": 30, "file_name": "c.png", "height": 32, "width": 48}]
    if with_images:
        for img in images:
            Image.fromarray(rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)).save(
                root / "imgs" / img["file_name"])
    blob = np.zeros((48, 64), dtype=np.uint8)
    blob[10:30, 20:41] = 1
    blob[15:20, 25:30] = 0  # a hole
    compressed = mask_utils.encode(np.asfortranarray(blob))
    ring = np.zeros((40, 40), dtype=np.uint8)
    ring[5:35, 5:35] = 1
    ring[12:28, 12:28] = 0
    crowd = np.zeros((48, 64), dtype=np.uint8)
    crowd[30:46, 0:30] = 1
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "iscrowd": 0, "area": 300.0, "bbox": [2.0, 3.0, 18.0, 14.0],
         "segmentation": [[2.0, 3.0, 20.0, 3.0, 20.0, 17.0, 2.0, 17.0], [4.0, 20.0, 8.0, 20.0, 6.0, 24.0]]},
        {"id": 2, "image_id": 10, "category_id": 12, "iscrowd": 0, "area": float(blob.sum()),
         "bbox": [float(v) for v in mask_utils.toBbox(compressed)],
         "segmentation": {"size": [48, 64], "counts": compressed["counts"].decode()}},
        {"id": 3, "image_id": 10, "category_id": 3, "iscrowd": 1, "area": float(crowd.sum()),
         "bbox": [0.0, 30.0, 30.0, 16.0], "segmentation": _uncompressed_rle(crowd)},
        {"id": 4, "image_id": 20, "category_id": 3, "iscrowd": 0, "area": float(ring.sum()),
         "bbox": [5.0, 5.0, 30.0, 30.0], "segmentation": _uncompressed_rle(ring)},
    ]
    categories = [{"id": 3, "name": "cat3"}, {"id": 7, "name": "cat7"}, {"id": 12, "name": "cat12"}]
    path = root / "annotations" / "instances_tiny.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_loader_matches_pycocotools(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    reference = COCO(str(ann_file))  # pycocotools reading the file itself
    assert ds.category_ids == [3, 7, 12] and ds.num_classes == 3
    assert [ds.label_of[c] for c in (3, 7, 12)] == [1, 2, 3]
    assert len(ds) == 3  # the image without annotations stays for evaluation

    image, target = ds[ds.ids.index(10)]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    expected_pixels = np.asarray(Image.open(tmp_path / "imgs" / "a.png"))
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected_pixels)
    # crowd annotation 3 excluded; 1 (polygon, two parts) and 2 (compressed RLE) kept in annotation order
    anns = [reference.anns[1], reference.anns[2]]
    assert target["labels"].tolist() == [2, 3]
    for mask, ann in zip(target["masks"], anns):
        assert np.array_equal(mask.numpy(), reference.annToMask(ann))
    x, y, w, h = reference.anns[1]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert int(target["image_id"]) == 10

    _, target = ds[ds.ids.index(20)]  # uncompressed RLE
    assert np.array_equal(target["masks"][0].numpy(), reference.annToMask(reference.anns[4]))
    assert target["labels"].tolist() == [1]

    _, target = ds[ds.ids.index(30)]  # no annotation at all
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 32, 48)


def test_filter_empty_drops_images_without_usable_instances(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    assert CocoDetection(tmp_path / "imgs", ann_file, filter_empty=True).ids == [10, 20]


def test_lsj_identity_flip_and_upscale_against_hand_computed_masks(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    image, target = ds[ds.ids.index(20)]  # 40 x 40
    ring = target["masks"][0].numpy()

    same, t = LargeScaleJitter(40, (1.0, 1.0), flip_prob=0.0)(image, dict(target))
    assert same.shape == (3, 40, 40) and torch.allclose(same, image.float())
    assert np.array_equal(t["masks"][0].numpy(), ring)

    flipped, t = LargeScaleJitter(40, (1.0, 1.0), flip_prob=1.0)(image, dict(target))
    assert torch.allclose(flipped, image.float().flip(-1))
    assert np.array_equal(t["masks"][0].numpy(), ring[:, ::-1])

    # scale 2: the 40 x 40 image becomes 80 x 80 and the 40 x 40 crop starts at round(40 * u) on both axes
    torch.manual_seed(3)
    up, t = LargeScaleJitter(40, (2.0, 2.0), flip_prob=0.0)(image, dict(target))
    torch.manual_seed(3)
    torch.rand(())  # flip draw
    torch.rand(())  # scale draw
    offset = round(40 * torch.rand(()).item())
    doubled = np.kron(ring, np.ones((2, 2), dtype=np.uint8))  # nearest-neighbour x2 by hand
    assert up.shape == (3, 40, 40)
    assert np.array_equal(t["masks"][0].numpy(), doubled[offset:offset + 40, offset:offset + 40])


def test_lsj_boxes_match_cropped_masks_and_drop_empty_instances(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file, transforms=LargeScaleJitter(32, (0.3, 2.0)))
    torch.manual_seed(0)
    seen_drop = False
    for _ in range(40):
        for index in range(len(ds)):
            image, target = ds[index]
            n_before = len(ds.load_target(ds.ids[index])["labels"])
            assert image.dtype == torch.float32 and max(image.shape[1:]) <= 32
            masks = target["masks"].numpy()
            assert masks.shape[1:] == tuple(image.shape[1:])
            assert len(masks) == len(target["boxes"]) == len(target["labels"])
            seen_drop |= len(masks) < n_before
            for mask, box in zip(masks, target["boxes"].tolist()):
                ys, xs = np.nonzero(mask)
                assert len(ys) > 0
                assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert seen_drop  # random crops cut some instances out entirely


def test_demo_writer_round_trips_through_pycocotools(tmp_path):
    from maetransfer.data.demo import render_scenes

    root = write_demo_coco(tmp_path / "demo", num_train=3, num_val=2, size=48, max_shapes=3)
    for split, seed, count in (("train2017", 0, 3), ("val2017", 1, 2)):
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.cats) == [1, 3, 5, 7, 9, 11] and len(coco.imgs) == count
        for image_id, (pixels, instances) in zip(sorted(coco.imgs), render_scenes(count, 48, seed=seed, max_shapes=3)):
            anns = coco.imgToAnns[image_id]
            assert len(anns) == len(instances)
            for ann, inst in zip(anns, instances):
                assert np.array_equal(coco.annToMask(ann), inst.mask.astype(np.uint8))
                assert ann["category_id"] == 2 * inst.category + 1
            stored = np.asarray(Image.open(root / split / coco.imgs[image_id]["file_name"]))
            assert np.array_equal(stored, pixels)


def test_bad_json_and_missing_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="broken.json: not valid JSON") as err:
        load_coco_json(bad)
    assert "\n" not in str(err.value)

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(CocoFormatError, match="wrong.json: missing list 'categories'"):
        load_coco_json(wrong)

    dangling = tmp_path / "dangling.json"
    dangling.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "height": 4, "width": 4}],
                                    "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
                                    "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(CocoFormatError, match="dangling.json: annotations\\[0\\] refers to unknown image_id 2"):
        load_coco_json(dangling)

    with pytest.raises(FileNotFoundError, match="nothere.json: annotation file not found"):
        load_coco_json(tmp_path / "nothere.json")

    ann_file = make_tiny_coco(tmp_path / "noimg", with_images=False)
    ds = CocoDetection(tmp_path / "noimg" / "imgs", ann_file)
    with pytest.raises(FileNotFoundError, match="a.png: image file not found") as err:
        ds[0]
    assert "\n" not in str(err.value)
