"""Bad input on the command line, in the config, in the output folder and around the demos: found up front, reported
as one line, and nothing of an earlier run is lost."""
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import pretrain.demo as demo
import pretrain.main as pretrain_main
from maetransfer.cli import check_output_dir, run_tool, tool_parser
from maetransfer.config import ConfigError, load_config
from maetransfer.data.cls import write_demo_data
from maetransfer.data.demo import write_demo_images
from maetransfer.data.images import ImageReadError
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
# the recipes (configs/report/ holds report suites, which are no recipes)
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "report")


def _tool(name):
    return load_tool(name)


train_cls, train_det, train_seg = _tool("train_cls"), _tool("train_det"), _tool("train_seg")
pretrain_tool, visualize_mae = _tool("pretrain_mae"), _tool("visualize_mae")
convert_checkpoint = _tool("convert_checkpoint")

CLS_TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
            "model.img_size=32", "data.demo=false", "train.epochs=1", "train.batch_size=4", "train.warmup_epochs=0",
            "eval.batch_size=8", "train.num_workers=0", "train.log_period=1", "train.init_checkpoint=",
            "aug.mixup=0", "aug.cutmix=0", "aug.auto_augment=", "aug.reprob=0"]


def _fails(main, argv, capsys):
    """Run a tool's main(argv) that must fail: (exit code, the lines of its stderr but the progress bars')."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code
    del exc  # frees the failed run's objects now (a DataLoader's worker would otherwise hold up a later collection)
    return code, [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. config values typed by their defaults ------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.train.overwrite is False and isinstance(cfg.train.epochs, int)


@pytest.mark.parametrize("override, line", [
    ("train.lr=abc", "train.lr=abc is not a number or null"),
    ("train.epochs=abc", "train.epochs=abc is not an integer"),
    ("train.betas=abc", "train.betas=abc is not a list of numbers"),
    ("train.betas=[0.9,abc]", "train.betas=[0.9,abc] is not a list of numbers"),
    ("train.epochs=1.5", "train.epochs=1.5 is not an integer"),
    ("train.epochs=null", "train.epochs=null is not an integer"),
    ("train.amp=true", "train.amp=true is not a string"),
    ("train.compile=[1]", "train.compile=[1] is not true or false or a string"),
    ("train.unsafe_load=1", "train.unsafe_load=1 is not true or false"),
    ("train.steps=[a]", "train.steps=[a] is not a list of numbers"),
    ("train.clip_grad=x", "train.clip_grad=x is not a number or null"),
    ("model.depth=2.5", "model.depth=2.5 is not an integer or null"),
    ("aug.scale=0.5", "aug.scale=0.5 is not a list of numbers"),
    ("train=3", "train is a section of keys, not a value (train=3)"),
])
def test_a_value_of_the_wrong_type_is_one_line_before_anything_runs(override, line, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _fails(train_cls.main, ["--output-dir", str(out), override], capsys)
    assert (code, err) == (2, [f"error: command line: {line}"])
    assert not out.exists()


@pytest.mark.parametrize("config, override, key, value", [
    ("cls/demo.yaml", "train.max_iters=1e5", "train.max_iters", 100000),  # a whole number in float notation
    ("cls/demo.yaml", "train.lr=1", "train.lr", 1),                      # an int where a float (or null) goes
    ("cls/demo.yaml", "train.warmup_epochs=3", "train.warmup_epochs", 3),
    ("cls/demo.yaml", "train.warmup_epochs=0.5", "train.warmup_epochs", 0.5),  # the demo file sets it to 2
    ("cls/demo.yaml", "data.root=1234", "data.root", "1234"),            # a folder named by digits
    ("cls/demo.yaml", "train.init_checkpoint=", "train.init_checkpoint", ""),
    ("cls/demo.yaml", "train.compile=max-autotune", "train.compile", "max-autotune"),
    ("cls/demo.yaml", "train.compile=true", "train.compile", True),
    ("cls/demo.yaml", "train.steps=[100,0.5]", "train.steps", [100, 0.5]),
    ("cls/demo.yaml", "aug.color_jitter=0.4", "aug.color_jitter", 0.4),
    ("cls/demo.yaml", "aug.cutmix_minmax=[0.2,0.8]", "aug.cutmix_minmax", [0.2, 0.8]),
    ("seg/base.yaml", "model.out_indices=null", "model.out_indices", None),
    ("seg/base.yaml", "model.scale_factors=[2,1]", "model.scale_factors", [2, 1]),
    ("seg/demo.yaml", "data.class_names=[a,b,c,d,e,f]", "data.class_names", ["a", "b", "c", "d", "e", "f"]),
    ("seg/base.yaml", "eval.min_size=null", "eval.min_size", None),
    ("det/base.yaml", "data.scale_range=[1,2]", "data.scale_range", [1, 2]),
    ("det/base.yaml", "train.steps=[]", "train.steps", []),
])
def test_valid_overrides_pass_as_a_user_means_them(config, override, key, value):
    assert OmegaConf.select(load_config(config, [override]), key) == value


def test_a_derived_yaml_file_is_typed_by_its_base(tmp_path):
    derived = tmp_path / "mine.yaml"
    derived.write_text(f"_base_: {ROOT / 'configs/cls/demo.yaml'}\ntrain:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r'^.*mine\.yaml: train\.epochs="ten" is not an integer$'):
        load_config(derived)
    derived.write_text(f"_base_: {ROOT / 'configs/cls/demo.yaml'}\ntrain:\n  epochs: 3\n  lr: 1.0e-3\n")
    assert load_config(derived).train.lr == 1e-3


@pytest.mark.parametrize("text, argv, line", [
    (None, [], "{config}: config file not found"),
    ("train: [unclosed\n", [], "{config}: not valid YAML ("),
    ("- a\n", [], "{config}: a config must be a mapping at the top level"),
    ("_base_: {base}\nmodel:\n  archh: vit_base\n", [], "{config}: unknown config key 'model.archh'"),
    ("_base_: {base}\ntrain:\n  epochs: ten\n", [], '{config}: train.epochs="ten" is not an integer'),
    ("_base_: {base}\n", ["lr"], "command line: override 'lr' is not of the form key=value"),
    ("_base_: {seg}\n", [], "{config}: a recipe for task 'seg' (Semantic segmentation (UperNet)), which "
                            "tools/train_seg.py runs, not tools/train_cls.py"),
    ("_base_: {base}\n", ["task=det"], "{config}: a recipe for task 'det'"),
    ("_base_: {base}\n", ["task=depth"], "{config}: task 'depth' is not one of pretrain, det, seg, cls"),
])
def test_a_bad_config_file_or_override_stops_the_tool_with_one_line(finished_run, text, argv, line, tmp_path, capsys):
    """As a user runs it: exit 2, one line naming the file (or the command line), the run folder left as it was."""
    config = tmp_path / "mine.yaml"
    if text is not None:
        config.write_text(text.format(base=ROOT / "configs/cls/demo.yaml", seg=ROOT / "configs/seg/demo.yaml"))
    before = _snapshot(finished_run)
    code, err = _fails(train_cls.main, ["--config", str(config), "--output-dir", str(finished_run), *argv], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: " + line.format(config=config)), err
    assert _snapshot(finished_run) == before


# -- 2 and 6. the output folder ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("cls") / "data", n_train=8, n_val=4, size=32, seed=1)


@pytest.fixture(scope="module")
def finished_run(cls_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    train_cls.main(["--output-dir", str(out), f"data.root={cls_data}", *CLS_TINY])
    return out


@pytest.mark.parametrize("hooks, line", [
    ("[nowhere.Hook]", "error: train.hooks: cannot import nowhere.Hook (No module named 'nowhere')"),
    ("[maetransfer.config.ConfigError]", "error: train.hooks: maetransfer.config.ConfigError is not a subclass of "
                                         "maetransfer.engine.Hook"),
    ("[{type: maetransfer.engine.hooks.MetricLogger, every: 3}]",
     "error: train.hooks: maetransfer.engine.hooks.MetricLogger: MetricLogger.__init__() got an unexpected keyword "
     "argument 'every'"),
])
def test_a_hook_the_config_names_that_cannot_be_built_is_one_line_before_anything_runs(cls_data, tmp_path, capsys,
                                                                                        hooks, line):
    code, err = _fails(train_cls.main, ["--output-dir", str(tmp_path / "run"), f"data.root={cls_data}", *CLS_TINY,
                                        f"train.hooks={hooks}"], capsys)
    assert (code, err) == (1, [line])
    assert not (tmp_path / "run").exists()


def test_cheap_checks_come_before_the_demo_data_and_its_pretraining(finished_run, tmp_path, monkeypatch, capsys):
    """The detection demo from a fresh checkout (cwd): a --resume file that does not exist, or an --eval-only
    checkpoint of another task, ends with one line at once, before the demo data set or the demo encoder's
    pretraining is written."""
    monkeypatch.chdir(tmp_path)
    code, err = _fails(train_det.main, ["--resume", str(tmp_path / "missing.pth")], capsys)
    assert (code, err) == (2, [f"error: {tmp_path / 'missing.pth'}: cannot resume: no such file (train.resume)"])
    code, err = _fails(train_det.main, ["--eval-only", "--checkpoint", str(finished_run / "checkpoint.pth")], capsys)
    assert (code, err) == (1, [f"error: {finished_run / 'checkpoint.pth'}: a classification model, but "
                               "tools/train_det.py evaluates detection models (use tools/train_cls.py)"])
    assert list(tmp_path.iterdir()) == []


def test_a_new_run_into_a_finished_runs_folder_stops_before_writing(finished_run, cls_data, capsys):
    before = _snapshot(finished_run)
    code, err = _fails(train_cls.main, ["--output-dir", str(finished_run), f"data.root={cls_data}", *CLS_TINY], capsys)
    assert (code, err) == (2, [f"error: {finished_run} holds a run (checkpoint.pth at iteration 2): resume it with "
                                "--resume auto, choose another --output-dir, or pass --overwrite to start "
                                "over there"])
    assert _snapshot(finished_run) == before


@pytest.mark.parametrize("extra, code, line", [
    (["train.lr=abc"], 2, "error: command line: train.lr=abc is not a number or null"),
    (["train.lrr=1"], 2, "error: command line: unknown config key 'train.lrr' (did you mean train.lr?)"),
    (["--resume", "auto", "data.root={missing}"], 1, None),
    (["train.overwrite=true", "data.root={missing}"], 1, None),
])
def test_a_failing_rerun_leaves_the_finished_run_byte_identical(finished_run, cls_data, tmp_path, capsys, extra, code,
                                                                line):
    missing = tmp_path / "no_such_data"
    before = _snapshot(finished_run)
    argv = ["--output-dir", str(finished_run), f"data.root={cls_data}", *CLS_TINY,
            *[e.format(missing=missing) for e in extra]]
    got, err = _fails(train_cls.main, argv, capsys)
    assert got == code and len(err) == 1 and err[0].startswith("error: ")
    assert err[0] == line if line else str(missing) in err[0]
    assert _snapshot(finished_run) == before


def test_eval_only_in_a_runs_folder_writes_to_its_eval_subfolder(finished_run, cls_data, capsys):
    before = _snapshot(finished_run)
    metrics = train_cls.main(["--output-dir", str(finished_run), f"data.root={cls_data}", *CLS_TINY, "--eval-only",
                              "--checkpoint", str(finished_run / "checkpoint.pth")])
    assert f"{finished_run} holds a training run: the evaluation writes to {finished_run / 'eval'}" in \
        capsys.readouterr().out
    assert {k: v for k, v in _snapshot(finished_run).items() if k.parts[0] != "eval"} == before
    assert (finished_run / "eval" / "config.yaml").is_file() and (finished_run / "eval" / "metrics.json").is_file()
    assert metrics["num_images"] == 4


def test_overwriting_a_run_starts_its_logs_afresh(finished_run, cls_data, tmp_path):
    """--overwrite trains again in the folder; log.jsonl then holds the new run's records only, once."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    old = [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()]
    train_cls.main(["--output-dir", str(out), f"data.root={cls_data}", *CLS_TINY, "--overwrite"])
    new = [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert new == old and new == sorted(new)


def test_resuming_or_overwriting_a_run_passes_the_guard(finished_run):
    cfg = load_config("cls/demo.yaml", [f"train.output_dir={finished_run}"])
    with pytest.raises(ConfigError, match="holds a run"):
        check_output_dir(cfg)
    for override in ("train.resume=auto", f"train.resume={finished_run / 'checkpoint.pth'}", "train.overwrite=true"):
        check_output_dir(load_config("cls/demo.yaml", [f"train.output_dir={finished_run}", override]))
    with pytest.raises(ConfigError, match="holds a run"):  # resuming another run's checkpoint would overwrite this one
        check_output_dir(load_config("cls/demo.yaml", [f"train.output_dir={finished_run}",
                                                       f"train.resume={finished_run.parent / 'other.pth'}"]))


def test_running_a_demo_again_starts_over_in_its_own_folder_only(finished_run, tmp_path):
    """`python tools/train_cls.py` twice reruns the demo in the demo config's own output folder; a config derived from
    the demo with another output folder keeps the guard."""
    demo = tmp_path / "demo.yaml"
    demo.write_text(f"_base_: {ROOT / 'configs/cls/demo.yaml'}\ntrain:\n  output_dir: {finished_run}\n")
    check_output_dir(load_config(demo), demo_config=str(demo))
    elsewhere = tmp_path / "other_demo.yaml"
    elsewhere.write_text(f"_base_: {ROOT / 'configs/cls/demo.yaml'}\ntrain:\n  output_dir: {tmp_path / 'x'}\n")
    with pytest.raises(ConfigError, match="holds a run"):
        check_output_dir(load_config(demo), demo_config=str(elsewhere))


def test_an_output_folder_that_is_a_file_or_under_one(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code, err = _fails(train_cls.main, ["--output-dir", str(tmp_path / "file")], capsys)
    assert (code, err) == (2, [f"error: output folder {tmp_path / 'file'} is a file"])
    code, err = _fails(train_cls.main, ["--output-dir", str(tmp_path / "file" / "run")], capsys)
    assert (code, err) == (2, [f"error: output folder {tmp_path / 'file' / 'run'} cannot be created: "
                                f"{tmp_path / 'file'} is a file"])
    assert (tmp_path / "file").read_text() == "mine"


def test_an_output_folder_without_write_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions do not stop writing (the under-a-file case covers this)")
        code, err = _fails(train_cls.main, ["--output-dir", str(locked / "run")], capsys)
        assert (code, err) == (2, [f"error: output folder {locked / 'run'} cannot be created: {locked} is not "
                                    "writable"])
    finally:
        locked.chmod(0o700)


def test_visualize_and_convert_check_their_output_path_first(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    # the checkpoint does not exist either: the output path is checked before anything is read
    code, err = _fails(visualize_mae.main, [str(tmp_path / "none.pth"), "a.jpg", "--output",
                                            str(tmp_path / "file" / "recon.png")], capsys)
    assert (code, err) == (2, [f"error: --output {tmp_path / 'file' / 'recon.png'} cannot be written: its folder "
                                f"{tmp_path / 'file'} is a file"])
    code, err = _fails(visualize_mae.main, [str(tmp_path / "none.pth"), "a.jpg", "--output", str(tmp_path)], capsys)
    assert (code, err) == (2, [f"error: --output {tmp_path} is a folder"])
    code, err = _fails(convert_checkpoint.main, [str(tmp_path / "none.pth"), "--output",
                                                 str(tmp_path / "file" / "x.pth"), "--to", "timm"], capsys)
    assert (code, err) == (2, [f"error: --output {tmp_path / 'file' / 'x.pth'} cannot be written: its folder "
                                f"{tmp_path / 'file'} is a file"])
    code, err = _fails(convert_checkpoint.main, [str(tmp_path / "none.pth"), "--output", str(tmp_path / "file" / "hf"),
                                                 "--to", "hf"], capsys)
    assert (code, err) == (2, [f"error: --output {tmp_path / 'file' / 'hf'} cannot be created: {tmp_path / 'file'} "
                                "is a file"])
    assert (tmp_path / "file").read_text() == "mine"


def test_visualize_and_convert_keep_an_earlier_output_unless_told(tmp_path, capsys):
    """An existing output is refused in one line before the checkpoint is read; --overwrite replaces it."""
    (tmp_path / "recon.png").write_text("mine")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    code, err = _fails(visualize_mae.main, [str(tmp_path / "none.pth"), "a.jpg", "--output",
                                            str(tmp_path / "recon.png")], capsys)
    assert (code, err) == (2, [f"error: --output {tmp_path / 'recon.png'} exists: pass --overwrite to replace it, or "
                                "choose another --output"])
    code, err = _fails(convert_checkpoint.main, [str(tmp_path / "none.pth"), "--output", str(tmp_path / "hf"),
                                                 "--to", "hf"], capsys)
    assert (code, err) == (2, [f"error: --output {tmp_path / 'hf'} exists: pass --overwrite to replace it, or choose "
                                "another --output"])
    assert (tmp_path / "recon.png").read_text() == "mine" and (tmp_path / "hf" / "config.json").read_text() == "{}"
    # with --overwrite the output check passes: the missing checkpoint is the next problem
    code, err = _fails(visualize_mae.main, [str(tmp_path / "none.pth"), "a.jpg", "--output",
                                            str(tmp_path / "recon.png"), "--overwrite"], capsys)
    assert code == 1 and err[0].startswith(f"error: {tmp_path / 'none.pth'}")


# -- 3. errors raised in DataLoader workers ----------------------------------------------------------------------------
class _Unreadable(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise ImageReadError(f"img{i}.jpg: corrupt or unreadable image")


def test_run_tool_unwraps_an_error_from_a_worker(capsys):
    def first_batch(num_workers):
        return next(iter(DataLoader(_Unreadable(), num_workers=num_workers)))

    lines = []
    for num_workers in (0, 1):
        code, err = _fails(lambda argv: run_tool(tool_parser("t", "x.yaml"), lambda: first_batch(num_workers)), [],
                           capsys)
        lines.append((code, err))
    assert lines[0] == lines[1] == (1, ["error: img0.jpg: corrupt or unreadable image"])


def _corrupt(path: Path) -> None:
    """Keep the header (the file still opens) but cut the pixel data: it fails when decoded."""
    path.write_bytes(path.read_bytes()[:200])


def test_a_corrupt_image_in_a_worker_is_the_same_line_as_without_workers(tmp_path, capsys):
    data = write_demo_data(tmp_path / "data", n_train=8, n_val=4, size=32, seed=1)
    _corrupt(sorted((data / "images" / "train").rglob("*.png"))[0])
    lines = []
    for num_workers in (0, 1):
        lines.append(_fails(train_cls.main, ["--output-dir", str(tmp_path / f"w{num_workers}"), f"data.root={data}",
                                             *CLS_TINY, f"train.num_workers={num_workers}"], capsys))
    assert lines[0] == lines[1] and lines[0][0] == 1 and len(lines[0][1]) == 1, lines
    assert "corrupt" in lines[0][1][0] and "Caught" not in lines[0][1][0]


def test_a_corrupt_image_in_pretraining_workers_is_the_same_line(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 20, 90)).save(images / f"{i}.jpg", quality=95)
    _corrupt(images / "0.jpg")
    lines = []
    for num_workers in (0, 1):
        lines.append(_fails(pretrain_tool.main, [
            "--output-dir", str(tmp_path / f"w{num_workers}"), f"data.root={images}", "model.img_size=32",
            "model.depth=1", "model.decoder_depth=1", "data.num_preview=0", "train.batch_size=4", "train.epochs=1",
            "train.warmup_epochs=0", f"train.num_workers={num_workers}"], capsys))
    assert lines[0] == lines[1] and lines[0][0] == 1 and len(lines[0][1]) == 1, lines
    assert "0.jpg" in lines[0][1][0] and "Caught" not in lines[0][1][0]


# -- 4. the demo encoder -----------------------------------------------------------------------------------------------
DEMO_TINY = ["model.depth=1", "model.decoder_depth=1", "train.batch_size=4", "train.max_iters=4",
             "train.checkpoint_period=2", "train.warmup_epochs=0", "data.num_preview=0", "train.num_workers=0",
             "train.log_period=1"]


@pytest.fixture(scope="module")
def demo_scenes(tmp_path_factory):
    return write_demo_images(tmp_path_factory.mktemp("scenes"))


@pytest.fixture
def demo_root(demo_scenes, tmp_path, monkeypatch):
    """A fresh checkout's output/demo (the cwd is tmp_path) with the generated scenes already in place."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "output/demo/data/pretrain"
    data.mkdir(parents=True)
    for scene in demo_scenes.iterdir():
        os.link(scene, data / scene.name)
    return Path("output/demo")


def test_an_interrupted_demo_pretraining_resumes_and_only_then_is_complete(demo_root, monkeypatch, capsys):
    real_save = pretrain_main.save_torch

    def killed_after_first_checkpoint(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_main, "save_torch", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo_encoder(overrides=DEMO_TINY)
    pretrain_dir = demo_root / "pretrain"
    assert torch.load(pretrain_dir / "checkpoint.pth", weights_only=True)["iter"] == 2
    assert (pretrain_dir / pretrain_main.ENCODER_FILE).is_file()  # half pretrained: not the demo encoder
    assert not demo.demo_encoder_path().exists() and demo.pretrains_demo_encoder("demo")

    monkeypatch.setattr(pretrain_main, "save_torch", real_save)
    capsys.readouterr()
    encoder = demo.ensure_demo_encoder(overrides=DEMO_TINY)
    resumed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0].endswith("iteration 2")  # resumed, not started over
    assert encoder == demo.demo_encoder_path() and not demo.pretrains_demo_encoder("demo")
    assert torch.load(pretrain_dir / "checkpoint.pth", weights_only=True)["iter"] == 4
    assert encoder.read_bytes() == (pretrain_dir / pretrain_main.ENCODER_FILE).read_bytes()
    assert demo.resolve_init_checkpoint("demo") == str(encoder)


def test_demos_started_together_pretrain_once(demo_root, monkeypatch, capsys):
    runs = []

    def counted_run(cfg):
        runs.append(cfg.train.output_dir)
        return pretrain_main.run(cfg)

    monkeypatch.setattr(demo, "run", counted_run)
    results = []
    threads = [threading.Thread(target=lambda: results.append(demo.ensure_demo_encoder(overrides=DEMO_TINY)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 1 and results == [demo.demo_encoder_path()] * 2
    assert "waiting for the demo encoder that another process is pretraining" in capsys.readouterr().out


# -- 5. demo data only into the demo's own folder -------------------------------------------------------------------
@pytest.mark.parametrize("tool, demo_config", [(train_cls, "configs/cls/demo.yaml"),
                                               (train_det, "configs/det/demo.yaml"),
                                               (train_seg, "configs/seg/demo.yaml")])
def test_a_config_derived_from_a_demo_never_writes_demo_data_into_its_root(tool, demo_config, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my data")
    config = tmp_path / "my_config.yaml"
    config.write_text(f"_base_: {ROOT / demo_config}\ndata:\n  root: {mine}\n")
    code, err = _fails(tool.main, ["--config", str(config), "--output-dir", str(tmp_path / "out")], capsys)
    demo_root = load_config(demo_config).data.root
    assert (code, err) == (2, [f"error: data.demo=true generates the demo set into {demo_root} only, but data.root "
                                f"is {mine}: pass data.demo=false to use the data there"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "my_config.yaml"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_pretraining_the_demo_config_on_a_missing_root_writes_no_scenes(tmp_path, capsys):
    missing = tmp_path / "imagenet" / "train"
    code, err = _fails(pretrain_tool.main, ["--output-dir", str(tmp_path / "out"), f"data.root={missing}"], capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {missing}")
    assert not (tmp_path / "imagenet").exists()


# -- 5. lines that say how to fix what they name -----------------------------------------------------------------------
def test_error_lines_name_the_fix(cls_data, tmp_path, capsys):
    """A checkpoint of another ViT size names the model.arch it fits; a run folder given as a checkpoint names the
    checkpoint inside; a data set that is not there says to set data.root. Each exits 1 and writes nothing."""
    from maetransfer.models import build_vit

    micro = tmp_path / "micro.pth"
    torch.save({"model": build_vit("vit_micro").state_dict()}, micro)
    run_folder = tmp_path / "earlier_run"
    run_folder.mkdir()
    (run_folder / "checkpoint.pth").write_bytes(micro.read_bytes())
    tiny = [a for a in CLS_TINY if not a.startswith(("model.embed_dim", "model.arch", "train.init_checkpoint"))]
    cases = [([f"data.root={cls_data}", *tiny, "model.arch=vit_demo", f"train.init_checkpoint={micro}"],
              f"error: checkpoint {micro} is a ViT with embed 64/depth 4 but the model is embed 128/depth 1: "
              "model.arch=vit_micro builds a model it fits"),
             ([f"data.root={cls_data}", *CLS_TINY, f"train.init_checkpoint={run_folder}"],
              f"error: {run_folder}: a folder; pass the checkpoint inside it, {run_folder / 'checkpoint.pth'}"),
             ([f"data.root={tmp_path / 'nowhere'}", *CLS_TINY],
              f"error: {tmp_path / 'nowhere' / 'val.json'}: annotation file not found (set data.root= to the data "
              "set's folder)")]
    for argv, line in cases:
        out = tmp_path / "run"
        code, err = _fails(train_cls.main, ["--output-dir", str(out), *argv], capsys)
        assert (code, err[-1]) == (1, line)
        assert not (out / "checkpoint.pth").exists()


@pytest.mark.parametrize("tool, argv, line", [
    ("predict", ["--topk", "-2"], "error: argument --topk: -2 must be at least 1"),
    ("predict", ["--workers", "-1"], "error: argument --workers: -1 must be at least 0"),
    ("predict", ["--batch-size", "-1"], "error: argument --batch-size: -1 must be at least 1"),
    ("predict", ["--score-thresh", "1.5"], "error: argument --score-thresh: 1.5 must be in [0, 1]"),
    ("visualize_mae", ["--mask-ratio", "1.5"], "error: argument --mask-ratio: 1.5 must be in [0, 1)"),
    ("submit", ["--nodes", "0"], "error: argument --nodes: 0 must be at least 1"),
])
def test_numeric_options_are_range_checked_where_they_are_parsed(tool, argv, line):
    common = {"predict": ["--config", "configs/cls/demo.yaml", "--checkpoint", "x.pth", "--output-dir", "out", "a.jpg"],
              "visualize_mae": ["x.pth", "a.jpg"], "submit": ["tools/train_det.py"]}[tool]
    run = subprocess.run([sys.executable, f"tools/{tool}.py", *argv, *common], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.splitlines()[-1] == f"{tool}.py: {line}", run.stderr
    assert "Traceback" not in run.stderr


def test_submit_without_srun_prints_its_dry_run_and_refuses_to_submit_in_one_line(tmp_path):
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"  # a PATH with python and without Slurm's commands
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    command = [sys.executable, "tools/submit.py", "tools/train_det.py", "--output-dir", str(tmp_path / "run")]
    dry = subprocess.run([*command[:2], "--dry-run", *command[2:]], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert dry.returncode == 0 and "#SBATCH --requeue" in dry.stdout, dry.stderr
    real = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (real.returncode, real.stderr.strip()) == (1, "error: Slurm's srun is not on PATH: submit from a node of "
                                                         "the cluster (--dry-run prints the batch script anywhere)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tool, missing", [
    (train_det, "annotations/instances_val2017.json"), (train_seg, "images/validation"), (train_cls, "val")])
def test_a_wrong_data_root_is_one_line_before_the_init_checkpoint_is_fetched(tool, missing, tmp_path, capsys,
                                                                              monkeypatch):
    """The data the config names is looked for first: an init checkpoint that would be downloaded (a released name)
    is not fetched for a run whose data is not there."""
    fetched = []
    monkeypatch.setattr(demo, "resolve", lambda spec, unsafe=False: fetched.append(spec) or spec)  # the tools' resolver
    code, err = _fails(tool.main, ["--output-dir", str(tmp_path / "run"), f"data.root={tmp_path / 'nowhere'}",
                                   "data.demo=false", "train.init_checkpoint=mae_pretrain_vit_base"], capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'nowhere' / missing}"), err
    assert fetched == [] and not (tmp_path / "run").exists()


def test_a_multi_process_job_says_a_bad_command_line_once(tmp_path):
    """Every process of a torchrun job reads the same command line and files before they join, and fails alike: the
    one-line error (and a usage error's usage) appears once in the job's output, not once per process. Rank 0, which
    says it, is made the slower one (3 s at its start): torchrun stops the job as soon as one process fails, so the
    silent rank 1 must not end first."""
    slow_start = tmp_path / "slow_rank0"
    slow_start.mkdir()
    (slow_start / "sitecustomize.py").write_text(
        "import os, time\nif os.environ.get('RANK') == '0':\n    time.sleep(3)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(slow_start), os.environ.get("PYTHONPATH")]))}
    tool = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29747",
            "tools/train_cls.py", "--output-dir", str(tmp_path / "run")]
    for extra, status, line in (
            ([f"data.root={tmp_path / 'none'}", "data.demo=false"], 1,
             f"error: {tmp_path / 'none' / 'val.json'}: annotation file not found (set data.root= to the data set's "
             "folder)"),
            (["--bogus"], 2, "train_cls.py: error: unrecognized arguments: --bogus")):
        run = subprocess.run([*tool, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode != 0
        said = run.stdout + run.stderr
        assert said.count(line) == 1 and f"exitcode: {status}" in said, said[-2000:]
        assert said.count("usage: train_cls.py") == (1 if extra == ["--bogus"] else 0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tool, old, new", [
    (train_cls, "model.drop_path=0.2", "model.drop_path_rate"),
    (train_cls, "data.input_size=448", "model.img_size"),
    (train_cls, "data.train=lists/train.csv", "data.train_split"),
    (train_cls, "data.val=lists/val.csv", "data.val_split"),
    (train_det, "model.pixel_mean=[0,0,0]", "data.mean"),
    (train_det, "model.pixel_std=[1,1,1]", "data.std"),
])
def test_an_earlier_key_name_is_told_the_current_one(tool, old, new, tmp_path, capsys):
    code, err = _fails(tool.main, ["--output-dir", str(tmp_path / "run"), old], capsys)
    assert (code, err) == (2, [f"error: command line: config key '{old.split('=')[0]}' is now '{new}'"])
    assert not (tmp_path / "run").exists()


def test_an_earlier_key_name_in_a_recipe_file_is_told_the_current_one(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"_base_: {ROOT / 'configs/cls/demo.yaml'}\nmodel:\n  drop_path: 0.2\n")
    code, err = _fails(train_cls.main, ["--config", str(recipe), "--output-dir", str(tmp_path / "run")], capsys)
    assert (code, err) == (2, [f"error: {recipe}: config key 'model.drop_path' is now 'model.drop_path_rate'"])
