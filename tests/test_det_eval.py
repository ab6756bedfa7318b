"""The COCO evaluator against COCOeval run directly: perfect predictions give AP 1.0, imperfect ones the same 12
numbers, and the result / metrics files have the standard format."""
import copy
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maetransfer.data.coco import CocoDetection
from maetransfer.det.evaluator import STAT_NAMES, COCOEvaluator, instances_to_results
from maetransfer.engine import evaluated_indices

from test_det_data import make_tiny_coco


def _direct_stats(ann_file, results, iou_type):
    """COCOeval on the raw annotation file, no project code involved."""
    gt = COCO(str(ann_file))
    dt = gt.loadRes(copy.deepcopy(results))
    ev = COCOeval(gt, dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def _gt_outputs(ds, drop_last=False, jitter=0.0, seed=0):
    """Detector outputs made from the ground truth (non-crowd instances), optionally perturbed."""
    rng = np.random.default_rng(seed)
    outputs = {}
    for image_id in ds.ids:
        info = ds.coco.imgs[image_id]
        anns = [a for a in ds.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        if drop_last and anns:
            anns = anns[:-1]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        boxes += torch.from_numpy(rng.uniform(-jitter, jitter, boxes.shape).astype(np.float32))
        masks = [ds.coco.annToMask(a) for a in anns]
        masks = (torch.from_numpy(np.stack(masks)).bool() if masks else
                 torch.zeros(0, info["height"], info["width"], dtype=torch.bool))
        outputs[image_id] = {"boxes": boxes, "labels": torch.tensor([ds.label_of[a["category_id"]] for a in anns]),
                             "scores": torch.from_numpy(rng.uniform(0.5, 1.0, len(anns)).astype(np.float32)),
                             "masks": masks}
    return outputs


def test_perfect_predictions_give_ap_1_and_match_cocoeval(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    results = []
    for image_id, out in _gt_outputs(ds).items():
        results += instances_to_results(out, image_id, ds.category_ids)
    metrics = COCOEvaluator(ds, tmp_path / "out").evaluate_results(results)
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(100.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(100.0)
        direct = _direct_stats(ann_file, [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")}
                                          for r in results], iou_type)
        ours = [metrics[iou_type][k] for k in STAT_NAMES]
        assert ours == pytest.approx([v * 100 if v >= 0 else None for v in direct])

    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert len(written) == 3  # 2 + 1 non-crowd instances
    assert {r["category_id"] for r in written} == {3, 7, 12}  # original COCO ids, not labels
    first = written[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert isinstance(first["segmentation"]["counts"], str)
    gt = COCO(str(ann_file))
    ann = gt.anns[1]
    assert first["bbox"] == pytest.approx(ann["bbox"])
    assert np.array_equal(mask_utils.decode(first["segmentation"]), gt.annToMask(ann))
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["bbox"]["AP"] == pytest.approx(100.0) and "AP-cat7" in saved["segm"]


def test_imperfect_predictions_match_cocoeval_run_directly(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    results = []
    for image_id, out in _gt_outputs(ds, drop_last=True, jitter=3.0, seed=1).items():
        results += instances_to_results(out, image_id, ds.category_ids)
    # plus a confident false positive
    results.append({"image_id": 20, "category_id": 12, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.99,
                    "segmentation": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in mask_utils.encode(
                        np.asfortranarray(np.pad(np.ones((10, 10), np.uint8), ((0, 30), (0, 30))))).items()}})
    metrics = COCOEvaluator(ds, tmp_path / "out").evaluate_results(results, verbose=False)
    for iou_type in ("bbox", "segm"):
        direct = _direct_stats(ann_file, [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")}
                                          for r in results], iou_type)
        assert [metrics[iou_type][k] for k in STAT_NAMES] == pytest.approx(
            [v * 100 if v >= 0 else None for v in direct])
        assert 0 < metrics[iou_type]["AP"] < 100


def test_max_images_evaluates_the_first_images_against_their_ground_truth_only(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    assert evaluated_indices(len(ds), max_images=1) == [0]
    outputs = _gt_outputs(ds)
    results = instances_to_results(outputs[ds.ids[0]], ds.ids[0], ds.category_ids)  # image 20's instance is unseen
    metrics = COCOEvaluator(ds, tmp_path / "out").evaluate_results(results, [ds.ids[0]], verbose=False)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0) and metrics["segm"]["AR100"] == pytest.approx(100.0)
    whole = COCOEvaluator(ds, tmp_path / "whole").evaluate_results(results, verbose=False)
    assert whole["bbox"]["AR100"] < 100.0


def test_result_format_and_empty_predictions(tmp_path):
    ann_file = make_tiny_coco(tmp_path)
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :3] = True
    out = {"boxes": torch.tensor([[0.25, 0.5, 2.125, 2.0]]), "labels": torch.tensor([2]),
           "scores": torch.tensor([0.123456789]), "masks": mask}
    (res,) = instances_to_results(out, 10, ds.category_ids)
    assert np.array_equal(mask_utils.decode(res["segmentation"]), mask[0].numpy().astype(np.uint8))
    # label 2 is the third category id; xywh boxes and scores unrounded, as detectron2 writes them
    assert res["category_id"] == 12 and res["bbox"] == [0.25, 0.5, 1.875, 1.5]
    assert res["score"] == pytest.approx(0.123456789, rel=1e-7)
    metrics = COCOEvaluator(ds, tmp_path / "out").evaluate_results([], verbose=False)
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0


def test_faster_coco_eval_gives_the_stats_of_pycocotools():
    """The two COCOeval backends on the same generated set (every area range, crowd regions, polygons and RLE, false
    positives, wrong classes, 100 detections per image): the same 12 stats and per-category APs for bbox and segm."""
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed")
    from benchmarks.bench_coco_eval import make_gt_and_results
    from maetransfer.det.evaluator import coco_eval

    dataset, results = make_gt_and_results(40, seed=3)
    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    assert sum(a["iscrowd"] for a in dataset["annotations"]) > 0
    for iou_type in ("bbox", "segm"):
        reference = coco_eval(gt, results, iou_type, names, verbose=False, backend="pycocotools")
        faster = coco_eval(gt, results, iou_type, names, verbose=False, backend="faster_coco_eval")
        assert faster == pytest.approx(reference, rel=1e-12, abs=1e-12), iou_type
        assert 0 < reference["AP"] < 100 and all(reference[k] is not None for k in ("APs", "APm", "APl"))
