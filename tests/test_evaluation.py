"""One evaluation loop for every task: `eval.max_images` means the first N images of the split on any number of
processes, and the main process ends with the metrics (and writes the files) of a one-process evaluation; the other
processes get {}. Detection and segmentation here (classification: tests/test_cls_eval.py), each task built from
its recipe with tiny settings and evaluated through its own `Task.evaluate`, on 1 and on 2 gloo processes."""
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from maetransfer.config import load_config
from maetransfer.data.ade import write_demo_ade20k
from maetransfer.data.coco import write_demo_coco

ROOT = Path(__file__).resolve().parent.parent


def _det_task(data, out):
    from maetransfer.det.train import DetectionTask
    from test_det_model import TINY
    cfg = load_config(ROOT / "configs/det/demo.yaml", [f"data.root={data}", "data.demo=false", *TINY,
                                                       "model.rpn_post_nms_top_n_test=20", "eval.max_images=3",
                                                       "eval.num_workers=0", f"train.output_dir={out}"])
    return DetectionTask(cfg)


def _seg_task(data, out):
    from maetransfer.seg.train import SegmentationTask
    from test_seg_tool import TINY
    cfg = load_config(ROOT / "configs/seg/demo.yaml", [f"data.root={data}", *TINY, "eval.max_images=3",
                                                       "eval.num_workers=0", f"train.output_dir={out}"])
    return SegmentationTask(cfg)


BUILDERS = {"det": _det_task, "seg": _seg_task}


def _evaluate(task_name, data, out):
    """The task's evaluation of its model at a fixed random init (the same weights on every process)."""
    task = BUILDERS[task_name](data, out)
    torch.manual_seed(0)
    model = task.build(eval_only=True)
    return task.evaluate(task.build_evaluator(), model), task.results


def _worker(rank, store, task_name, data, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    scalars, results = _evaluate(task_name, data, out)
    Path(out).mkdir(parents=True, exist_ok=True)  # the main process writes there; the other may come first
    torch.save({"scalars": scalars, "results": results}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return {"det": write_demo_coco(tmp / "coco", num_train=1, num_val=5, size=64, max_shapes=2),
            "seg": write_demo_ade20k(tmp / "ADEChallengeData2016", 1, 5, 64)}


@pytest.mark.parametrize("task_name", ["det", "seg"])
def test_max_images_and_the_results_are_the_same_on_two_processes(task_name, data, tmp_path):
    torch.set_num_threads(1)
    one, two = tmp_path / "one", tmp_path / "two"
    scalars, results = _evaluate(task_name, data[task_name], one)
    mp.spawn(_worker, args=(str(tmp_path / "store"), task_name, str(data[task_name]), str(two)), nprocs=2)
    main, other = (torch.load(two / f"rank{rank}.pt", weights_only=False) for rank in range(2))
    assert other == {"scalars": {}, "results": {}}
    assert main["results"] == results and main["scalars"] == scalars
    assert json.loads((two / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    if task_name == "det":  # the predictions of the first 3 of the 5 images, in the split's order
        written = json.loads((two / "coco_instances_results.json").read_text())
        assert written == json.loads((one / "coco_instances_results.json").read_text())
        first = BUILDERS["det"](data["det"], tmp_path / "ids")
        first.build(eval_only=True)
        assert written and {r["image_id"] for r in written} <= set(first.val_set.ids[:3])
