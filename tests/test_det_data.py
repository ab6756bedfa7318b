"""COCO loading (polygon / RLE / crowd / empty images / non-contiguous ids) against pycocotools itself, LSJ and the
test resize against hand-computed geometry and PIL, the demo writer and the one-line errors for bad files."""
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from maetransfer.data.coco import (CocoDetection, CocoFormatError, LargeScaleJitter, ResizeShortestEdge,
                                   load_coco_json, write_demo_coco)
from maetransfer.data.instances import nearest_indices, resize_image


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
    assert [ds.label_of[c] for c in (3, 7, 12)] == [0, 1, 2]
    assert len(ds) == 3  # the image without annotations stays for evaluation

    image, target = ds[ds.ids.index(10)]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    expected_pixels = np.asarray(Image.open(tmp_path / "imgs" / "a.png"))
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected_pixels)
    # crowd annotation 3 excluded; 1 (polygon, two parts) and 2 (compressed RLE) kept in annotation order; with an
    # RLE instance in the image every instance is a bitmask
    anns = [reference.anns[1], reference.anns[2]]
    assert target["labels"].tolist() == [1, 2]
    for mask, ann in zip(target["masks"], anns):
        assert np.array_equal(mask.numpy(), reference.annToMask(ann))
    x, y, w, h = reference.anns[1]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert int(target["image_id"]) == 10

    _, target = ds[ds.ids.index(20)]  # uncompressed RLE
    assert np.array_equal(target["masks"][0].numpy(), reference.annToMask(reference.anns[4]))
    assert target["labels"].tolist() == [0]

    _, target = ds[ds.ids.index(30)]  # no annotation at all
    assert target["boxes"].shape == (0, 4) and target["masks"] == []


def make_polygon_coco(root):
    """One 40 x 60 image with polygon instances only: a square, a two-part instance, and one whose only polygon has
    too few points (dropped, as detectron2 drops it)."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "imgs" / "p.png")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0, "bbox": [10.0, 10.0, 20.0, 20.0],
         "segmentation": [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]},
        {"id": 2, "image_id": 1, "category_id": 9, "iscrowd": 0, "bbox": [40.0, 2.0, 18.0, 30.0],
         "segmentation": [[40.0, 2.0, 50.0, 2.0, 45.0, 12.0], [48.0, 20.0, 58.0, 20.0, 58.0, 32.0, 48.0, 32.0]]},
        {"id": 3, "image_id": 1, "category_id": 5, "iscrowd": 0, "bbox": [1.0, 1.0, 2.0, 2.0],
         "segmentation": [[1.0, 1.0, 3.0, 3.0]]},
    ]
    path = root / "annotations" / "instances_poly.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "p.png", "height": 40, "width": 60}],
                                "annotations": annotations,
                                "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]}))
    return path


def test_polygon_instances_stay_polygons(tmp_path):
    ann_file = make_polygon_coco(tmp_path)
    _, target = CocoDetection(tmp_path / "imgs", ann_file)[0]
    assert target["labels"].tolist() == [0, 1]  # annotation 3 has no usable polygon
    masks = target["masks"]
    assert isinstance(masks, list) and [len(m) for m in masks] == [1, 2]
    assert masks[1][0].dtype == np.float64 and masks[1][0].tolist() == [40.0, 2.0, 50.0, 2.0, 45.0, 12.0]


def test_filter_empty_drops_images_without_usable_instances(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    assert CocoDetection(tmp_path / "imgs", ann_file, filter_empty=True).ids == [10, 20]


def test_lsj_identity_flip_and_upscale_against_hand_computed_masks(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    image, target = ds[ds.ids.index(20)]  # 40 x 40, a bitmask instance
    ring = target["masks"][0].numpy()

    same, t = LargeScaleJitter(40, (1.0, 1.0), flip_prob=0.0)(image, dict(target))
    assert same.dtype == torch.uint8 and torch.equal(same, image)
    assert np.array_equal(t["masks"][0].numpy(), ring)

    flipped, t = LargeScaleJitter(40, (1.0, 1.0), flip_prob=1.0)(image, dict(target))
    assert torch.equal(flipped, image.flip(-1))
    assert np.array_equal(t["masks"][0].numpy(), ring[:, ::-1])

    # scale 2: 40 x 40 becomes 80 x 80 and the 40 x 40 crop starts at round(40 * u): NumPy draws flip, scale, crop
    np.random.seed(3)
    up, t = LargeScaleJitter(40, (2.0, 2.0), flip_prob=0.0)(image, dict(target))
    np.random.seed(3)
    np.random.uniform(), np.random.uniform(2.0, 2.0)
    offset = int(np.round(40 * np.random.uniform()))
    doubled = np.kron(ring, np.ones((2, 2), dtype=np.uint8))  # nearest-neighbour x2 by hand
    assert up.shape == (3, 40, 40)
    assert np.array_equal(t["masks"][0].numpy(), doubled[offset:offset + 40, offset:offset + 40])
    expected_pixels = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((80, 80), Image.BILINEAR))
    assert np.array_equal(up.permute(1, 2, 0).numpy(), expected_pixels[offset:offset + 40, offset:offset + 40])


def test_lsj_polygons_are_scaled_and_cut_to_the_crop(tmp_path):
    ann_file = make_polygon_coco(tmp_path)
    image, target = CocoDetection(tmp_path / "imgs", ann_file)[0]  # 40 x 60
    # flip, then scale 1.5 (size 30 x U(1.5, 1.5) = 45 fits 40 x 60 by factor 0.75): 30 x 45, crop offset 15 * u
    np.random.seed(0)
    _, t = LargeScaleJitter(30, (1.5, 1.5), flip_prob=1.0)(image, dict(target))
    np.random.seed(0)
    np.random.uniform(), np.random.uniform()
    left = int(np.round(15 * np.random.uniform()))
    # the square [10, 30]^2 flipped to x in [30, 50], scaled by 0.75 to [22.5, 37.5] x [7.5, 22.5], then shifted
    square = np.concatenate(t["masks"][0]).reshape(-1, 2)
    box = [max(22.5 - left, 0.0), 7.5, min(37.5 - left, 30.0), 22.5]
    assert square[:, 0].min() == pytest.approx(box[0]) and square[:, 0].max() == pytest.approx(box[2])
    assert t["boxes"][0].tolist() == pytest.approx(box)
    assert t["labels"][0] == 0


def test_lsj_boxes_match_cropped_instances_and_drop_empty_ones(tmp_path):
    from maetransfer.data.instances import polygons_to_bitmask

    for ann_file, polygons in ((make_tiny_coco(tmp_path / "rle"), False), (make_polygon_coco(tmp_path / "poly"), True)):
        ds = CocoDetection(ann_file.parent.parent / "imgs", ann_file, transforms=LargeScaleJitter(32, (0.3, 2.0)))
        np.random.seed(0)
        seen_drop = False
        for _ in range(40):
            for index in range(len(ds)):
                image, target = ds[index]
                n_before = len(ds.load_target(ds.ids[index])["labels"])
                assert image.dtype == torch.uint8 and max(image.shape[1:]) <= 32
                assert len(target["masks"]) == len(target["boxes"]) == len(target["labels"])
                seen_drop |= len(target["labels"]) < n_before
                for mask, box in zip(target["masks"], target["boxes"].tolist()):
                    if polygons:
                        points = np.concatenate(mask).reshape(-1, 2)
                        assert box == pytest.approx([*points.min(0), *points.max(0)])
                        mask = polygons_to_bitmask(mask, *image.shape[1:])
                    else:
                        assert mask.shape == image.shape[1:]
                        ys, xs = np.nonzero(mask.numpy())
                        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert seen_drop  # random crops cut some instances out entirely


def test_nearest_mask_resize_is_pils():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w, nh, nw = (int(v) for v in rng.integers(1, 400, 4))
        mask = rng.integers(0, 2, (h, w)).astype(np.uint8)
        reference = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
        rows, cols = nearest_indices(h, nh), nearest_indices(w, nw)
        padded = np.pad(mask, ((0, 1), (0, 1)))  # index -1: PIL's fill
        assert np.array_equal(padded[rows][:, cols], reference)


def test_test_resize_rounds_as_detectron2():
    resize = ResizeShortestEdge(1024, 1024)
    # the longer side becomes 1024 and the other int(x + 0.5): 333 x 500 -> 681.98 -> 682 (flooring would give 681)
    assert resize.output_size(333, 500) == (682, 1024)
    assert resize.output_size(640, 427) == (1024, 683)
    assert ResizeShortestEdge(800, 1333).output_size(480, 640) == (800, 1067)  # short side rule
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 333, 500), dtype=np.uint8))
    out, _ = ResizeShortestEdge(300, 300)(image, {})
    reference = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((300, 200), Image.BILINEAR)  # antialiased
    assert out.shape == (3, 200, 300) and np.array_equal(out.permute(1, 2, 0).numpy(), np.asarray(reference))
    assert torch.equal(resize_image(image, (333, 500)), image)


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
    with pytest.raises(FileNotFoundError, match="instances_tiny.json: 3 of the 3 images used are missing, first "
                                                ".*imgs/a.png") as err:
        CocoDetection(tmp_path / "noimg" / "imgs", ann_file)  # checked when the dataset is built
    assert "\n" not in str(err.value)

    ann_file = make_tiny_coco(tmp_path / "gone")
    ds = CocoDetection(tmp_path / "gone" / "imgs", ann_file)
    (tmp_path / "gone" / "imgs" / "a.png").unlink()  # removed after the check: still one line when read
    with pytest.raises(FileNotFoundError, match="a.png: image file not found") as err:
        ds[ds.ids.index(10)]
    assert "\n" not in str(err.value)
