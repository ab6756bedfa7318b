"""Bad input and faults in the training engine: one line naming the file and the problem, found before anything is
written, and nothing of an earlier run lost. Resume files, a too-small training set, a diverging loss, temporary
files of a killed run, logs of a resumed run, per-process RNG states under DDP, the process-group timeout."""
import importlib.util
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from tiny_trainer import train_tiny_mlp

from maetransfer.config import load_config
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.img_size=32", "model.decoder_embed_dim=32",
        "model.decoder_depth=1", "model.decoder_num_heads=4", "train.batch_size=4", "train.num_workers=0",
        "train.log_period=1", "train.warmup_epochs=0", "train.amp=none", "data.num_preview=2"]


def _pretrain(*args):
    from tools.pretrain_mae import main
    main(list(args))


def _pretrain_fails(capsys, *args, code: int = 1) -> str:
    """Run the pretraining tool expecting bad input: exit `code`; returns its stderr without the progress bar (which
    tqdm also writes there, ending it with a line break)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _pretrain(*args)
    assert exit_info.value.code == code
    return "\n".join(line for line in capsys.readouterr().err.split("\n") if "%|" not in line)


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier_run(image_dir, tmp_path_factory):
    """A finished 2-iteration pretraining run: checkpoint, encoder, logs, reconstructions, config."""
    out = tmp_path_factory.mktemp("earlier")
    _pretrain(f"data.root={image_dir}", *TINY, "train.max_iters=2", "train.checkpoint_period=2",
              "--output-dir", str(out))
    return out


class _CreatesFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _linear_engine_checkpoint(folder: Path) -> Path:
    """A training checkpoint of this engine for another model (as a detector's given to pretraining)."""
    from maetransfer.engine import Trainer

    cfg = load_config(ROOT / "configs/train_defaults.yaml", ["train.max_iters=1", "train.batch_size=2",
                                                             "train.num_workers=0", "train.device=cpu"])
    model = torch.nn.Linear(4, 1)
    Trainer(cfg, model, [{"params": list(model.parameters())}], list(torch.randn(4, 4)),
            lambda m, batch, device: ((m(batch) ** 2).mean(), {}), str(folder)).fit()
    return folder / "checkpoint.pth"


def _bad_resume_file(case: str, earlier: Path, tmp: Path):
    """(file, extra overrides, expected message after 'error: <file>: cannot resume: ')"""
    if case == "missing":
        return tmp / "nope.pth", [], re.escape("no such file (train.resume)")
    if case == "folder":
        return tmp, [], re.escape("a folder, not a checkpoint file (train.resume)")
    if case == "corrupt":
        path = tmp / "cut.pth"
        path.write_bytes((earlier / "checkpoint.pth").read_bytes()[:2000])
        return path, [], r"corrupt or not a PyTorch file \(RuntimeError: .+\)"
    if case == "encoder only":
        return earlier / "mae_pretrain_encoder.pth", [], re.escape(
            "not a training checkpoint of this engine (no optimizer, scaler, epoch and 3 more); to start from its "
            "weights use train.init_checkpoint")
    if case == "another model":
        return _linear_engine_checkpoint(tmp / "linear"), [], re.escape(
            "its weights are another model's: it lacks cls_token, pos_embed, mask_token and 71 more; it has weight, "
            "bias, which this model lacks")
    if case == "another size":
        return earlier / "checkpoint.pth", ["model.decoder_embed_dim=64"], re.escape(
            "its weights are another model's: mask_token is (1, 1, 32) in the file but (1, 1, 64) in this model, "
            "and 18 more tensors differ in shape")
    marker = tmp / "code_ran"
    path = tmp / "evil.pth"
    if case == "malicious torch.save":
        torch.save({"model": _CreatesFileWhenUnpickled(marker)}, path)
    else:  # a plain pickle, read by torch's legacy path
        path.write_bytes(pickle.dumps({"model": _CreatesFileWhenUnpickled(marker)}))
    return path, [], re.escape("it holds Python objects that weights_only loading refuses to unpickle, so it is "
                               "no checkpoint of this engine")


BAD_FILES = ["corrupt", "encoder only", "another model", "another size", "malicious torch.save", "malicious pickle"]


@pytest.mark.filterwarnings("error::UserWarning")  # a warning would print lines besides the one-line error
@pytest.mark.parametrize("case", ["missing", "folder", *BAD_FILES])
def test_a_bad_resume_file_is_one_line_and_nothing_is_written(case, image_dir, earlier_run, tmp_path, capsys):
    path, extra, expected = _bad_resume_file(case, earlier_run, tmp_path)
    out = tmp_path / "new"
    err = _pretrain_fails(capsys, f"data.root={image_dir}", *TINY, *extra, "--output-dir", str(out),
                          "--resume", str(path), code=2 if case in ("missing", "folder") else 1)  # found up front
    assert re.fullmatch(rf"error: {re.escape(str(path))}: cannot resume: {expected}\n", err), err
    assert not out.exists()
    assert not (tmp_path / "code_ran").exists()  # the malicious pickle never ran


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("case", BAD_FILES)
def test_a_run_folder_with_a_bad_checkpoint_is_left_as_it_was(case, image_dir, earlier_run, tmp_path, capsys):
    """The bad file as the run folder's own checkpoint.pth, resumed with --resume auto."""
    path, extra, expected = _bad_resume_file(case, earlier_run, tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(earlier_run, run_dir)
    shutil.copyfile(path, run_dir / "checkpoint.pth")
    before = _files(run_dir)
    err = _pretrain_fails(capsys, f"data.root={image_dir}", *TINY, *extra, "train.max_iters=4",
                          "--output-dir", str(run_dir), "--resume", "auto")
    assert re.fullmatch(rf"error: {re.escape(str(run_dir / 'checkpoint.pth'))}: cannot resume: {expected}\n", err), err
    assert _files(run_dir) == before  # not even config.yaml or log.jsonl was rewritten
    assert not (tmp_path / "code_ran").exists()


@pytest.mark.parametrize("overrides, line", [
    (["train.dist_timeout=0"], "train.dist_timeout=0.0: must be a positive number of minutes"),
    (["train.device=cpu", "train.amp=fp16"], "train.amp=fp16 needs a CUDA device; use bf16 on CPU"),
])
def test_a_bad_engine_setting_is_one_line_and_the_run_folder_is_left_as_it_was(overrides, line, image_dir,
                                                                              earlier_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(earlier_run, run_dir)
    before = _files(run_dir)
    err = _pretrain_fails(capsys, f"data.root={image_dir}", *TINY, *overrides, "train.max_iters=4",
                          "--output-dir", str(run_dir), "--resume", "auto")
    assert err == f"error: {line}\n"
    assert _files(run_dir) == before


def test_a_too_small_training_set_is_named_before_anything_is_written(tmp_path, capsys):
    from maetransfer.data.cls import write_demo_data
    train_cls = load_tool("train_cls")

    write_demo_data(tmp_path / "data", n_train=16, n_val=4, size=32)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train_cls.main(["--config", str(ROOT / "configs/cls/demo.yaml"), "--output-dir", str(out),
                        f"data.root={tmp_path / 'data'}", "data.demo=false", "model.arch=vit_micro",
                        "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
                        "model.img_size=32",
                        "train.init_checkpoint=", "train.batch_size=8", "train.accum_iter=3"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'data' / 'train.json'}: the training set has 16 samples, too few for one update of "
        f"batch_size 8 x accum_iter 3 x 1 process = 24 samples\n")
    assert not out.exists()


def test_a_diverging_loss_names_the_checkpoint_that_exists(image_dir, tmp_path, capsys):
    """lr 1e30: the first update with it makes the next loss non-finite."""
    common = [f"data.root={image_dir}", *TINY, "train.lr=1e30", "train.schedule=constant", "train.max_iters=6"]
    err = _pretrain_fails(capsys, *common, "--output-dir", str(tmp_path / "none"))
    assert err == ("error: loss is nan at iteration 2 (epoch 1); training stopped, no checkpoint was written "
                   "(try train.amp=bf16 or a lower lr)\n")
    assert not (tmp_path / "none/checkpoint.pth").exists()

    # warm-up from lr 0: iterations 1 and 2 are finite, the checkpoint holds iteration 2, iteration 3 diverges
    out = tmp_path / "kept"
    diverging = [*common, "train.warmup_iters=2", "train.checkpoint_period=2", "--output-dir", str(out)]
    message = (f"error: loss is nan at iteration 3 (epoch 1); training stopped, the last checkpoint is "
               f"{out / 'checkpoint.pth'} (iteration 2) (try train.amp=bf16 or a lower lr)\n")
    assert _pretrain_fails(capsys, *diverging) == message
    assert torch.load(out / "checkpoint.pth", weights_only=True)["iter"] == 2
    assert _pretrain_fails(capsys, *diverging, "--resume", "auto") == message  # the resumed one is named
    assert torch.load(out / "checkpoint.pth", weights_only=True)["iter"] == 2


def test_stale_temporary_files_are_removed_and_other_files_kept(image_dir, tmp_path, capsys):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = finished.pid
    out = tmp_path / "run"
    out.mkdir()
    stale = [f".checkpoint.pth.tmp{dead}", f".mae_pretrain_encoder.pth.tmp{os.getpid()}",  # own pid: reused
             f".config.yaml.tmp{dead}", f".log.jsonl.tmp{dead}"]
    kept = [f".model_ema.pth.tmp{os.getppid()}",  # a live process may still be writing it
            f"checkpoint.pth.tmp{dead}", ".checkpoint.pth.tmp", "notes.txt"]
    for name in stale + kept:
        (out / name).write_bytes(b"x" * 100)
    capsys.readouterr()
    _pretrain(f"data.root={image_dir}", *TINY, "train.max_iters=2", "--output-dir", str(out), "--resume", "auto")
    printed = capsys.readouterr().out.splitlines()
    for name in stale:
        assert not (out / name).exists(), name
        assert f"removed {out / name}, a temporary file left by a stopped run" in printed
    assert all((out / name).read_bytes() == b"x" * 100 for name in kept)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2]  # 'auto' without a checkpoint started afresh


def _train_linear(output_dir: Path, fail_at_call=None, fault=None, resume=""):
    """4 iterations, checkpoint at 2; `fault` (default: a kill) raised by the loss at call `fail_at_call`."""
    data = list(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)))
    train_tiny_mlp(output_dir, ["train.max_iters=4", "train.checkpoint_period=2", "train.device=cpu",
                                f"train.resume={resume}"], data, fail_at_call, fault)


def test_a_resumed_run_writes_each_log_record_once(tmp_path):
    """Killed after logging iteration 3 (checkpoint at 2): resuming drops record 3 and writes it again."""
    _train_linear(tmp_path / "full")
    _train_linear(tmp_path / "split", fail_at_call=4)
    log = tmp_path / "split/log.jsonl"
    assert [json.loads(line)["iter"] for line in log.read_text().splitlines()] == [1, 2, 3]
    _train_linear(tmp_path / "split", resume="auto")
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    full = [json.loads(line) for line in (tmp_path / "full/log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in resumed] == [1, 2, 3, 4]
    assert resumed == full  # the same losses, lr and epochs as the uninterrupted run


def _ddp_script():
    spec = importlib.util.spec_from_file_location("ddp_resume_script", ROOT / "tests" / "ddp_resume_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ddp_resume_restores_every_process_rng_and_is_bit_exact(tmp_path, capsys):
    """2 gloo processes whose loss draws from each process's RNG: stopped and resumed, epoch-based (from an epoch
    boundary) and iteration-based (from a mid-epoch checkpoint), they end with the uninterrupted run's weights."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29741",
                    str(ROOT / "tests/ddp_resume_script.py"), str(tmp_path)], cwd=ROOT, env=env, check=True,
                   timeout=240, capture_output=True)
    for mode in ("epochs", "iters"):
        full = torch.load(tmp_path / mode / "full/checkpoint.pth", weights_only=True)
        resumed = torch.load(tmp_path / mode / "split/checkpoint.pth", weights_only=True)
        assert full["iter"] == resumed["iter"] == {"epochs": 16, "iters": 12}[mode]
        assert len(resumed["rng"]) == 2 and not torch.equal(resumed["rng"][0]["torch"], resumed["rng"][1]["torch"])
        for key, value in full["model"].items():
            assert torch.equal(value, resumed["model"][key]), (mode, key)

    # The same checkpoint resumed by 1 process: one warning line, then the run goes on reseeded.
    shutil.copytree(tmp_path / "iters/split", tmp_path / "single")
    capsys.readouterr()
    _ddp_script().run(tmp_path / "single", ["train.max_iters=14"], resume="auto")
    checkpoint = tmp_path / "single/checkpoint.pth"
    assert (f"warning: {checkpoint} was written by 2 process(es) and this run has 1: the RNGs are reseeded from "
            f"(seed, epoch, rank), so the resumed run is not bit-exact with an uninterrupted one\n"
            in capsys.readouterr().err)
    assert torch.load(checkpoint, weights_only=True)["iter"] == 14


def test_dist_timeout_reaches_the_process_group(monkeypatch):
    import torch.distributed
    from maetransfer.engine import setup_process

    seen = {}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    setup_process(load_config(ROOT / "configs/train_defaults.yaml", ["train.dist_timeout=7.5",
                                                                     "train.device=cpu"]).train)
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=7.5)}


def test_a_process_whose_peers_never_join_stops_with_one_line(monkeypatch, capsys):
    """Rank 0 of 2 started alone: it gives up after train.dist_timeout (3 s here) instead of waiting forever."""
    from maetransfer.cli import run_tool, tool_parser
    from maetransfer.engine import setup_process

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29742"}.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(ROOT / "configs/train_defaults.yaml", ["train.dist_timeout=0.05", "train.device=cpu"])
    with pytest.raises(SystemExit) as exit_info:
        run_tool(tool_parser("", ""), lambda: setup_process(cfg.train))
    assert exit_info.value.code == 1
    assert re.fullmatch(r"error: joining the process group at 127\.0\.0\.1:29742 failed within train\.dist_timeout="
                        r"0\.05 minutes: Timed out after \d+ seconds waiting for clients\. 1/2 clients joined\.\n",
                        capsys.readouterr().err)


def test_a_loss_that_reports_divergence_itself_gets_the_same_line(tmp_path):
    """A loss_fn raising FloatingPointError (the detector does when its proposals are not finite)."""
    from maetransfer.engine import TrainingError

    diverged = FloatingPointError("RPN proposals or scores are not finite: training has diverged")
    with pytest.raises(TrainingError) as error:
        _train_linear(tmp_path, fail_at_call=3, fault=diverged)
    assert str(error.value) == (f"RPN proposals or scores are not finite: training has diverged at iteration 3 "
                                f"(epoch 1); training stopped, the last checkpoint is {tmp_path / 'checkpoint.pth'} "
                                f"(iteration 2) (try train.amp=bf16 or a lower lr)")


def test_a_second_run_into_a_folder_in_use_is_one_line_and_a_killed_runs_lock_blocks_nothing(image_dir, tmp_path):
    """Two pretrainings into one folder at the same time: the second (train.overwrite=true, so that only the lock can
    stop it) ends with one line naming the first one's process and leaves its files alone; a run killed with SIGKILL
    leaves its lock behind, and the next run there goes ahead."""
    out = tmp_path / "run"
    command = [sys.executable, "tools/pretrain_mae.py", f"data.root={image_dir}", *TINY, "train.epochs=10",
               "--output-dir", str(out)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text()) and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # held mid-run, whatever the machine's speed
    second = subprocess.run([*command, "train.overwrite=true"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert second.stderr.splitlines()[-1] == (f"error: {out} is in use by another run (process {first.pid} on "
                                              f"{os.uname().nodename}): wait for it to end, or choose another "
                                              f"--output-dir")
    assert first.wait(timeout=240) == 0, first.stderr[-2000:]
    iters = [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert iters == list(range(1, 41))  # the first run's records, each once: 16 images / batch 4, 10 epochs

    killed = subprocess.Popen([*command, "train.epochs=20", "--resume", "auto"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    while len((out / "log.jsonl").read_text().splitlines()) <= 40 and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # killed mid-run, its lock file left behind
    assert (out / ".run.lock").is_file()
    subprocess.run([*command, "train.epochs=20", "--resume", "auto"], cwd=ROOT, check=True, capture_output=True,
                   timeout=240)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["iter"] == 80


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of `size` bytes (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)  # never left mounted, even if still busy


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_last_checkpoint_stays(image_dir, tmp_path, small_disk,
                                                                               capsys):
    """Room for one checkpoint but not for the next one's temporary file beside it: the second write fails with one
    line naming the file and the space, its temporary file is removed, and the first checkpoint stays whole."""
    args = [f"data.root={image_dir}", *TINY, "data.num_preview=0", "train.max_iters=4", "train.checkpoint_period=2"]
    _pretrain(*args, "train.max_iters=2", "--output-dir", str(tmp_path / "sizing"))
    size = (tmp_path / "sizing" / "checkpoint.pth").stat().st_size
    out = small_disk(size * 3 // 2) / "run"
    err = _pretrain_fails(capsys, *args, "--output-dir", str(out)).strip().splitlines()
    assert len(err) == 1, err
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/checkpoint\.pth: no space left on its disk "
                        rf"\([\d.]+ MiB needed, [\d.]+ (bytes|KiB|MiB) free\); free some space or write elsewhere",
                        err[0]), err
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert torch.load(out / "checkpoint.pth", weights_only=True)["iter"] == 2


def test_a_process_lost_mid_run_ends_the_other_with_one_line(image_dir, tmp_path):
    """Rank 1 of 2 (its own process, as on another node) killed with SIGKILL while training: rank 0 ends within
    seconds, exit 1, with one line naming the lost rank and the checkpoint to resume from, and no traceback.
    (tests/test_multinode.py does the same across two nodes, and resumes.)"""
    command = [sys.executable, "tools/pretrain_mae.py", f"data.root={image_dir}", *TINY, "train.epochs=50",
               "train.checkpoint_period=2", "train.num_threads=1", "--output-dir", str(tmp_path)]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29743",
           "PYTHONUNBUFFERED": "1"}
    ranks = [subprocess.Popen(command, cwd=ROOT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    log, deadline = tmp_path / "log.jsonl", time.time() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 5):  # past the checkpoint of iteration 4
        assert time.time() < deadline and ranks[0].poll() is None, "the run did not reach 5 records"
        time.sleep(0.05)
    ranks[1].kill()
    lost = time.time()
    _, err = ranks[0].communicate(timeout=60)
    ended_in = time.time() - lost
    ranks[1].communicate()
    assert ranks[0].returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"error: rank 1 on {host} lost \(connection (closed|reset) by peer\) in iteration \d+ of 100; "
                        rf"the last checkpoint is {re.escape(str(tmp_path / 'checkpoint.pth'))} \(iteration \d+\): "
                        rf"run the same command with --resume auto to continue", errors[0]), errors[0]
    assert ended_in < 30
