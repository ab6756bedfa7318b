"""mIoU / mAcc / aAcc against hand-computed values (mmseg IoUMetric semantics)."""
import math

import pytest
import torch

from maetransfer.seg.metric import SegMetric, format_table, intersect_and_union

IGN = 255
# 4 classes; two ignored pixels (predicted as 2, must not count); class 2 only predicted; class 3 absent everywhere.
LABEL = torch.tensor([[0, 0, 1, IGN],
                      [0, 1, 1, IGN],
                      [1, 1, 0, 0]])
PRED = torch.tensor([[0, 1, 1, 2],
                     [0, 1, 2, 2],
                     [1, 1, 0, 1]])


def test_areas_by_hand():
    inter, union, pred, label = intersect_and_union(PRED, LABEL, 4, IGN).tolist()
    # class 0: 5 labelled, 3 predicted, all 3 right; class 1: 5 labelled, 6 predicted, 4 right;
    # class 2: 1 predicted (the ignored 2s are dropped), 0 labelled; class 3: nothing.
    assert inter == [3, 4, 0, 0]
    assert pred == [3, 6, 1, 0]
    assert label == [5, 5, 0, 0]
    assert union == [5, 7, 1, 0]


def test_summary_nan_classes_excluded():
    metric = SegMetric(4, ["a", "b", "c", "d"], IGN)
    metric.update(PRED, LABEL)
    out = metric.compute()
    # IoU: 3/5, 4/7, 0 (predicted only: counts), NaN (absent: excluded); Acc: 3/5, 4/5, NaN, NaN
    assert out["mIoU"] == round((3 / 5 + 4 / 7 + 0) / 3 * 100, 2) == 39.05
    assert out["mAcc"] == 70.0
    assert out["aAcc"] == 70.0  # 7 of 10 labelled pixels
    per = {r["class"]: r for r in out["per_class"]}
    assert per["c"]["IoU"] == 0.0 and per["c"]["Acc"] is None
    assert per["d"]["IoU"] is None and per["d"]["Acc"] is None
    table = format_table(out["per_class"])
    assert "nan" in table and "57.14" in table


def test_dataset_level_sums_not_per_image_means():
    metric = SegMetric(2, None, IGN)
    # image 1: class 0 perfectly right on 1 pixel; image 2: class 0 labelled on 3 pixels, predicted as 1
    metric.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 1, 1]))
    metric.update(torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 0, 1]))
    out = metric.compute()
    # class 0: I = 1, U = 1 + 3 = 4 -> 25 %; class 1: I = 4, U = 3 + 1 + 3 = 7 (pred 7, label 4) -> 4 / 7
    assert out["per_class"][0]["IoU"] == 25.0
    assert out["per_class"][1]["IoU"] == round(4 / 7 * 100, 2)
    assert math.isclose(out["aAcc"], 62.5)


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError, match="label values must lie in 0..3"):
        intersect_and_union(torch.tensor([0, 1]), torch.tensor([0, 7]), 4, IGN)
