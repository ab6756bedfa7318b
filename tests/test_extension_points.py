"""The loop's extension points, used as a user would: a task of one's own through `run_task` with its evaluator
(`DatasetEvaluator`), hooks added through the Python API and through the config (dotted import paths), a hook that
ends training early, the log's windowed means and medians against a per-update log, the checkpointer's history,
pointer and best checkpoint, and a checkpoint written before hooks had their own key still resuming."""
import json
import statistics
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from maetransfer.config import load_config
from maetransfer.engine import BEST_NAME, DatasetEvaluator, Hook, Task, run_task

ROOT = Path(__file__).resolve().parent.parent


class SquaredErrorEvaluator(DatasetEvaluator):
    """Mean squared error of a regressor over (x, y) pairs; `seen` keeps every index evaluated."""

    def __init__(self, dataset):
        self.dataset, self.batch_size = dataset, 3
        self.reset()

    def reset(self):
        self.total, self.count = 0.0, 0

    def forward(self, model, inputs, device):
        return model(inputs[0].to(device)).squeeze(1)

    def process(self, inputs, outputs):
        self.total += float(((outputs - inputs[1]) ** 2).sum())
        self.count += len(outputs)

    def local_results(self):
        return self.total, self.count

    def merge(self, parts):
        self.total, self.count = sum(p[0] for p in parts), sum(p[1] for p in parts)

    def evaluate(self):
        return {"val_loss": self.total / self.count, "images": self.count}


class RegressionTask(Task):
    """A task of one's own: a linear regressor on 32 noisy samples, evaluated on 10."""

    name = "regression"

    def build(self, eval_only):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(42, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(42, generator=g)
        self.train_set, self.val_set = TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))

    def build_evaluator(self):
        return SquaredErrorEvaluator(self.val_set)

    def param_groups(self, model):
        return [{"params": list(model.parameters())}]

    def loss_fn(self):
        return lambda model, batch, device: (((model(batch[0]).squeeze(1) - batch[1]) ** 2).mean(), {})


class RecordUpdates(Hook):
    """Every update's iteration and loss, and the evaluations."""

    def __init__(self):
        self.updates, self.evaluations = [], []

    def after_update(self, trainer, record):
        self.updates.append((trainer.iter, float(record["loss"])))

    def after_evaluate(self, trainer, metrics):
        self.evaluations.append((trainer.iter, metrics))


class StopBelow(Hook):
    """Ends training once an evaluation's val_loss is below `threshold`."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def after_evaluate(self, trainer, metrics):
        if metrics.get("val_loss", float("inf")) < self.threshold:
            trainer.request_stop(f"val_loss {metrics['val_loss']:.3f} < {self.threshold}")


class Killed(Exception):
    pass


class KillAt(Hook):
    """Ends the process's run at an update as a kill would: nothing written after the last checkpoint."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_update(self, trainer, record):
        if trainer.iter == self.iteration:
            raise Killed


CONFIGURED = []  # what the hook named in the config saw


class ConfiguredHook(Hook):
    def __init__(self, tag: str = ""):
        self.tag = tag

    def before_train(self, trainer):
        CONFIGURED.append((self.tag, trainer.iter))


def _cfg(output_dir, *overrides):
    """The engine's defaults with the evaluation keys every task recipe has."""
    recipe = Path(output_dir).parent / "regression.yaml"
    recipe.write_text(f"_base_: {ROOT / 'configs/train_defaults.yaml'}\n"
                      "eval:\n  max_images: 0\n  num_workers: 0\n  amp: none\n")
    return load_config(recipe, ["train.lr=0.05", "train.batch_size=4", "train.num_workers=0",
                                "train.schedule=constant", "train.device=cpu", f"train.output_dir={output_dir}",
                                *overrides])


def _log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def test_user_hooks_from_the_api_and_the_config_see_every_update_in_their_place(tmp_path):
    CONFIGURED.clear()
    recorder = RecordUpdates()
    cfg = _cfg(tmp_path / "run", "train.max_iters=12", "train.eval_period=4", "train.log_period=5",
               'train.hooks=["test_extension_points.ConfiguredHook", {type: test_extension_points.ConfiguredHook, '
               'tag: second}]')
    task = RegressionTask(cfg)
    results = run_task(task, hooks=[recorder])
    assert [i for i, _ in recorder.updates] == list(range(1, 13))
    assert [i for i, _ in recorder.evaluations] == [4, 8, 12]
    assert results == recorder.evaluations[-1][1] and results["images"] == 10
    assert CONFIGURED == [("", 0), ("second", 0)]
    # the hooks run after the built-in ones: the log of an update is written when the user's hook sees it
    records = [r for r in _log(tmp_path / "run") if "loss" in r]
    assert [r["iter"] for r in records] == [5, 10, 12] and [r["window"] for r in records] == [5, 5, 2]
    losses = [loss for _, loss in recorder.updates]
    for record, window in zip(records, (losses[0:5], losses[5:10], losses[10:12])):
        assert record["loss"] == pytest.approx(sum(window) / len(window), rel=1e-12)
        assert record["loss_median"] == pytest.approx(statistics.median(window), rel=1e-12)


def test_a_hook_ends_training_early_with_the_final_checkpoint_and_evaluation(tmp_path):
    recorder = RecordUpdates()
    cfg = _cfg(tmp_path / "run", "train.max_iters=200", "train.eval_period=8", "train.log_period=4")
    run_task(RegressionTask(cfg), hooks=[recorder, StopBelow(threshold=2.0)])
    stopped_at = next(i for i, m in recorder.evaluations if m["val_loss"] < 2.0)
    assert stopped_at < 200 and recorder.updates[-1][0] == stopped_at
    assert torch.load(tmp_path / "run/checkpoint.pth", weights_only=True)["iter"] == stopped_at
    assert recorder.evaluations[-1][0] == stopped_at  # the final evaluation of the weights it stopped with


def test_the_windowed_log_is_the_mean_and_median_of_the_per_update_log(tmp_path):
    """The same run logged every update and every 3 updates: each windowed record is the mean (and for the loss the
    median) of its updates, the learning rate that of its last update."""
    logs = {}
    for period in (1, 3):
        run_task(RegressionTask(_cfg(tmp_path / str(period), "train.max_iters=10", "train.log_period=" + str(period),
                                     "train.schedule=cosine", "train.warmup_iters=3")))
        logs[period] = [r for r in _log(tmp_path / str(period)) if "loss" in r]
    per_update = {r["iter"]: r for r in logs[1]}
    assert [r["iter"] for r in logs[3]] == [3, 6, 9, 10]
    start = 0
    for record in logs[3]:
        window = [per_update[i] for i in range(start + 1, record["iter"] + 1)]
        assert record["loss"] == pytest.approx(statistics.fmean(w["loss"] for w in window), rel=1e-12)
        assert record["loss_median"] == pytest.approx(statistics.median(w["loss"] for w in window), rel=1e-12)
        assert record["lr"] == window[-1]["lr"] and record["window"] == len(window)
        start = record["iter"]


def test_checkpoint_history_pointer_and_best(tmp_path):
    out = tmp_path / "run"
    recorder = RecordUpdates()
    cfg = _cfg(out, "train.max_iters=12", "train.checkpoint_period=3", "train.keep_checkpoints=2",
               "train.eval_period=2", "train.save_best=val_loss")
    run_task(RegressionTask(cfg), hooks=[recorder])
    assert sorted(p.name for p in out.glob("checkpoint*.pth")) == ["checkpoint.pth", "checkpoint_0000009.pth",
                                                                   "checkpoint_0000012.pth"]
    assert (out / "last_checkpoint").read_text().strip() == "checkpoint_0000012.pth"
    assert torch.load(out / "checkpoint_0000009.pth", weights_only=True)["iter"] == 9
    best_iter, best = min(((i, m) for i, m in recorder.evaluations), key=lambda e: e[1]["val_loss"])
    saved = torch.load(out / BEST_NAME, weights_only=True)
    assert saved["best"] == {"metric": "val_loss", "value": best["val_loss"], "iter": best_iter,
                             "epoch": saved["best"]["epoch"]}
    # best.pth holds the weights that scored it: evaluated again, the same number
    task = RegressionTask(cfg)
    model = task.build(eval_only=True)
    model.load_state_dict(saved["model"])
    assert task.evaluate(task.build_evaluator(), model)["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)


def test_resume_from_the_pointer_and_from_a_file_without_the_hooks_key_is_exact(tmp_path):
    """A run killed after its checkpoint at 5 of 10 updates (not a log boundary) and resumed ends with the weights, EMA
    and log of the uninterrupted run; so does one resumed from a checkpoint in the layout of files written before
    hooks kept their states under 'hooks' (the EMA at the top level, no log window: its log differs)."""
    common = ["train.max_iters=10", "train.log_period=4", "train.ema_decay=0.9", "train.checkpoint_period=5"]
    whole = run_task(RegressionTask(_cfg(tmp_path / "whole", *common)))
    with pytest.raises(Killed):
        run_task(RegressionTask(_cfg(tmp_path / "split", *common)), hooks=[KillAt(7)])
    old = tmp_path / "split/old_layout.pth"
    ckpt = torch.load(tmp_path / "split/checkpoint.pth", weights_only=True)
    assert set(ckpt["hooks"]) == {"WeightAverage", "MetricLogger"}
    hooks = ckpt.pop("hooks")
    torch.save({**ckpt, "model_ema": hooks["WeightAverage"]["model_ema"]}, old)
    resumed = run_task(RegressionTask(_cfg(tmp_path / "split", "train.resume=auto", *common)))
    from_old = run_task(RegressionTask(_cfg(tmp_path / "old", f"train.resume={old}", *common)))
    reference = torch.load(tmp_path / "whole/model_ema.pth", weights_only=True)["model"]
    for folder in ("split", "old"):
        ema = torch.load(tmp_path / folder / "model_ema.pth", weights_only=True)["model"]
        assert all(torch.equal(ema[k], reference[k]) for k in reference), folder
    assert resumed == whole and from_old == whole
    assert _log(tmp_path / "split") == _log(tmp_path / "whole")
