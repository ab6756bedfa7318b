"""Top-k, per-class and mean per-class accuracy against a hand-computed case; exact distributed gathering."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import TensorDataset

from maetransfer.cls.evaluate import AccuracyCounter, ClassificationEvaluator, write_results
from maetransfer.engine import inference_on_dataset

# Six classes. Rank of the true label: s0 1st, s1 2nd, s2 1st, s3 6th (the lowest score), s4 5th.
LOGITS = torch.tensor([[5., 0, 0, 0, 0, 0],
                       [0., 3, 4, 0, 0, 0],
                       [0., 2, 1, 0, 0, 0],
                       [1., 1, 0, 2, 1, 1],
                       [1., 5, 4, 6, 3, 0]])
LABELS = torch.tensor([0, 1, 1, 2, 0])


def test_hand_computed_accuracies(tmp_path):
    counter = AccuracyCounter(6)
    counter.update(LOGITS[:2], LABELS[:2])  # two batches: counts accumulate
    counter.update(LOGITS[2:], LABELS[2:])
    s = counter.summary()
    assert s["top1"] == pytest.approx(100 * 2 / 5)  # s0, s2
    assert s["top5"] == pytest.approx(100 * 4 / 5)  # all but s3
    # per class: 0 -> s0 right, s4 wrong: 50; 1 -> s1 wrong, s2 right: 50; 2 -> s3 wrong: 0; 3..5 have no images
    np.testing.assert_allclose(counter.per_class_accuracy()[:3], [50, 50, 0])
    assert np.isnan(counter.per_class_accuracy()[3:]).all()
    assert s["mean_class_acc"] == pytest.approx(100 / 3)
    assert s["num_images"] == 5 and s["num_classes_evaluated"] == 3
    by_hand = [-(row[y] - math.log(sum(math.exp(v) for v in row))) for row, y in zip(LOGITS.tolist(), LABELS)]
    assert s["loss"] == pytest.approx(sum(by_hand) / 5, rel=1e-6)

    expected = np.zeros((6, 6), dtype=np.int64)  # (true, predicted): s0 0->0, s1 1->2, s2 1->1, s3 2->3, s4 0->3
    for true, pred in [(0, 0), (1, 2), (1, 1), (2, 3), (0, 3)]:
        expected[true, pred] += 1
    np.testing.assert_array_equal(counter.confusion, expected)

    summary = write_results(counter, [f"c{i}" for i in range(6)], tmp_path)
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
    rows = list(csv.DictReader(open(tmp_path / "per_class_accuracy.csv")))
    assert [(r["name"], r["images"], r["top1_correct"]) for r in rows[:3]] == [("c0", "2", "1"), ("c1", "2", "1"),
                                                                                ("c2", "1", "0")]
    assert float(rows[0]["accuracy"]) == 50 and rows[5]["accuracy"] == ""


def test_topk_is_capped_by_the_number_of_classes():
    counter = AccuracyCounter(3)
    counter.update(torch.tensor([[0., 1, 2]]), torch.tensor([0]))
    assert counter.summary()["top1"] == 0 and "top5" not in counter.summary()


class _Lookup(nn.Module):
    """Logits read from a table by sample index (the dataset's 'image' is the index)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[x.long()]


def _dataset():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(7, 6, generator=g)  # 7 samples: not divisible by 2 ranks
    labels = torch.randint(0, 6, (7,), generator=g)
    return table, TensorDataset(torch.arange(7), labels)


def _evaluate(table, ds, batch_size, out, max_images=0):
    evaluator = ClassificationEvaluator(ds, [f"c{i}" for i in range(6)], batch_size, out, "lookup")
    return inference_on_dataset(_Lookup(table), evaluator, max_images=max_images), evaluator


def _worker(rank, store, out, max_images):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    table, ds = _dataset()
    summary, evaluator = _evaluate(table, ds, 2, out, max_images)
    counter = evaluator.counter
    torch.save({"summary": summary, "per_class_total": counter.per_class_total.tolist(),
                "confusion": counter.confusion.tolist()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("max_images", [0, 5])
def test_distributed_evaluation_counts_every_image_once_on_the_main_process(tmp_path, max_images):
    """7 images on 2 processes (batch 2) as on one (batch 3); eval.max_images=5 means the first 5 images on any number
    of processes. The results are the main process's; the other returns {}."""
    table, ds = _dataset()
    single, evaluator = _evaluate(table, ds, 3, tmp_path / "one", max_images)
    expected = max_images or 7
    assert single["num_images"] == expected
    assert evaluator.counter.per_class_total.tolist() == np.bincount(ds.tensors[1][:expected], minlength=6).tolist()
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path), max_images), nprocs=2)
    main, other = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2))
    assert other["summary"] == {}
    assert main["per_class_total"] == evaluator.counter.per_class_total.tolist()
    assert main["confusion"] == evaluator.counter.confusion.tolist()
    for key in ("top1", "top5", "mean_class_acc", "loss", "num_images"):
        assert main["summary"][key] == pytest.approx(single[key])
    assert json.loads((tmp_path / "metrics.json").read_text())["num_images"] == expected


def test_the_confusion_picture_keeps_its_header_inside_the_frame():
    """With few classes the matrix is narrower than its header line: the picture widens, so that no header pixel
    touches the right edge (a cut text would)."""
    from PIL import ImageFont

    from maetransfer.cls.evaluate import confusion_image

    classes = ["a", "b", "c"]
    image = np.asarray(confusion_image(np.eye(3, dtype=np.int64), classes).convert("L"))
    header_rows = image[:30]
    assert (header_rows[:, -4:] == 255).all()  # white margin right of the header
    header = "rows: true class, columns: predicted class"
    assert image.shape[1] > ImageFont.load_default().getlength(header)
