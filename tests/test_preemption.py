"""Stop signals without a scheduler: SIGTERM (preemption, torchrun passing a kill on) and SIGUSR1 / SIGUSR2 (Slurm's
time-limit warning) stop a run at the next optimizer update with its checkpoint written, also when they arrive during
an evaluation or a checkpoint write, and the resumed run ends with the weights of a run that was never stopped. Real
signals are sent: to the process itself, and to a tool's whole process group (its loader workers included), as Slurm
signals every process of a job step."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maetransfer.engine import RunStopped
from tiny_trainer import train_tiny_mlp

ROOT = Path(__file__).resolve().parent.parent
# 16 samples / batch 2 = 8 updates an epoch; 12 updates: the stops below fall mid-epoch and between checkpoints
COMMON = ["train.device=cpu", "train.max_iters=12", "train.checkpoint_period=5"]
DATA = list(torch.randn(16, 4, generator=torch.Generator().manual_seed(1)))


def _train(output_dir, overrides=(), signal_at_call=None, signum=signal.SIGTERM, during=None, resume=""):
    """The tiny MLP run (dropout: each update draws from the RNG, so only an exact resume matches), evaluated with a
    score. The process sends itself `signum` in loss call `signal_at_call`, or during the first evaluation (`during`).
    Returns the trainer; RunStopped propagates."""
    signalled = []

    def send_signal(call):
        if call == signal_at_call:
            os.kill(os.getpid(), signum)

    def evaluate_fn(model):
        if during == "evaluation" and not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signum)
        return {"score": float(model(torch.ones(1, 4)).item())}

    return train_tiny_mlp(output_dir, [*COMMON, *overrides, f"train.resume={resume}"], DATA, on_loss_call=send_signal,
                          evaluate_fn=evaluate_fn)


def _weights(folder):
    return torch.load(Path(folder) / "checkpoint.pth", weights_only=True)


def _assert_same_run(stopped_folder, full_folder):
    stopped, full = _weights(stopped_folder), _weights(full_folder)
    assert stopped["iter"] == full["iter"] == 12
    for key, value in full["model"].items():
        assert torch.equal(value, stopped["model"][key]), key
    iters = [json.loads(line)["iter"] for line in (Path(stopped_folder) / "log.jsonl").read_text().splitlines()]
    assert iters == [json.loads(line)["iter"] for line in (Path(full_folder) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    _train(folder, ["train.eval_period=3"])
    return folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_a_signal_stops_the_run_at_the_next_update_and_the_resumed_run_is_exact(signum, full_run, tmp_path, capsys):
    folder = tmp_path / "run"
    with pytest.raises(RunStopped) as stopped:
        _train(folder, ["train.eval_period=3"], signal_at_call=7, signum=signum)  # in update 7 of 12
    name = signal.Signals(signum).name
    assert stopped.value.exit_code == 128 + signum
    path = folder / "checkpoint.pth"
    assert str(stopped.value) == f"stopped by {name} at iteration 7 of 12; checkpoint {path} written"
    assert f"{stopped.value}; run the same command with --resume auto to continue\n" in capsys.readouterr().out
    checkpoint = _weights(folder)
    assert (checkpoint["iter"], checkpoint["batch_in_epoch"]) == (7, 7)  # mid-epoch, between checkpoints 5 and 10
    assert signal.getsignal(signum) is signal.SIG_DFL  # the engine's handlers are gone with the run
    _train(folder, ["train.eval_period=3"], resume="auto")
    _assert_same_run(folder, full_run)


@pytest.mark.parametrize("during", ["evaluation", "checkpoint write"])
def test_a_signal_during_an_evaluation_or_a_checkpoint_write_waits_for_it(during, full_run, tmp_path, monkeypatch):
    """The evaluation at update 3, or the checkpoint write at update 5, finishes; the run stops right after it."""
    folder = tmp_path / "run"
    if during == "checkpoint write":
        real_save = torch.save

        def save_with_a_signal(obj, path):
            if not (folder / "checkpoint.pth").exists():  # the first write (update 5): signalled half-way
                os.kill(os.getpid(), signal.SIGTERM)
            real_save(obj, path)
        monkeypatch.setattr(torch, "save", save_with_a_signal)
    with pytest.raises(RunStopped) as stopped:
        _train(folder, ["train.eval_period=3"], during=during)
    stop_iter = {"evaluation": 3, "checkpoint write": 5}[during]
    assert f"at iteration {stop_iter} of 12" in str(stopped.value)
    assert _weights(folder)["iter"] == stop_iter  # a whole, loadable checkpoint
    assert not list(folder.glob(".*.tmp*"))
    monkeypatch.undo()
    _train(folder, ["train.eval_period=3"], resume="auto")
    _assert_same_run(folder, full_run)


TINY_PRETRAIN = ["model.arch=vit_micro", "model.patch_size=8", "model.img_size=32", "model.decoder_embed_dim=32",
                 "model.decoder_depth=1", "model.decoder_num_heads=4", "train.batch_size=4", "train.log_period=1",
                 "train.warmup_epochs=1", "train.amp=none", "data.num_preview=2", "train.num_threads=1",
                 "train.num_workers=2", "train.epochs=10"]


def _wait_for_records(log: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{log} did not reach {count} records (exit code {process.poll()})")


def test_sigterm_to_a_tools_whole_process_group_stops_it_cleanly_and_it_resumes_exactly(image_dir, tmp_path):
    """As Slurm signals a job step: the tool and its two loader workers all get SIGTERM. The workers keep running,
    the tool writes its checkpoint at the next update and exits 143 with one line; --resume auto then ends with the
    weights of an uninterrupted run (40 updates: 4 per epoch)."""
    command = [sys.executable, "tools/pretrain_mae.py", f"data.root={image_dir}", *TINY_PRETRAIN]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([*command, "--output-dir", str(stopped)], cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_records(stopped / "log.jsonl", 3, process)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    stop_line = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(stop_line) == 1 and stop_line[0].endswith(
        f"of 40; checkpoint {stopped / 'checkpoint.pth'} written; run the same command with --resume auto to continue")
    assert "Traceback" not in err and "DataLoader worker" not in err
    iteration = _weights(stopped)["iter"]
    assert f"at iteration {iteration} of 40" in stop_line[0] and 3 <= iteration < 40

    subprocess.run([*command, "--output-dir", str(stopped), "--resume", "auto"], cwd=ROOT, check=True,
                   capture_output=True)
    subprocess.run([*command, "--output-dir", str(tmp_path / "full")], cwd=ROOT, check=True, capture_output=True)
    full, resumed = _weights(tmp_path / "full"), _weights(stopped)
    assert full["iter"] == resumed["iter"] == 40
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_workers_whose_torchrun_is_killed_checkpoint_and_stop_and_the_same_command_resumes_exactly(image_dir,
                                                                                                   tmp_path):
    """torchrun killed with SIGKILL (an OOM kill, a user's kill -9) cannot pass anything on to its workers, which
    torch starts in sessions of their own: the kernel sends them SIGTERM (PR_SET_PDEATHSIG), they write the
    checkpoint at the same update and exit within seconds, and the same command with --resume auto ends with the
    weights of an uninterrupted 2-process run."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    tool = ["tools/pretrain_mae.py", f"data.root={image_dir}", *TINY_PRETRAIN, "train.num_workers=0",
            "train.batch_size=2", "train.epochs=20"]  # 16 images / (2 x 2) = 4 updates an epoch, 80 in all

    def torchrun(port, out, *extra):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *tool,
                "--output-dir", str(out), *extra]

    killed = tmp_path / "killed"
    process = subprocess.Popen(torchrun(29751, killed), cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_records(killed / "log.jsonl", 5, process)
    process.kill()  # torchrun alone: its workers are in sessions of their own
    out, _ = process.communicate(timeout=60)
    deadline = time.time() + 60
    while time.time() < deadline and (killed / ".run.lock").exists() and _lock_held(killed / ".run.lock"):
        time.sleep(0.2)
    assert not _lock_held(killed / ".run.lock"), "the workers outlived their launcher"
    iteration = _weights(killed)["iter"]
    assert 5 <= iteration < 80
    subprocess.run(torchrun(29752, killed, "--resume", "auto"), cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=300)
    subprocess.run(torchrun(29753, tmp_path / "full"), cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=300)
    full, resumed = _weights(tmp_path / "full"), _weights(killed)
    assert full["iter"] == resumed["iter"] == 80
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def _lock_held(path: Path) -> bool:
    """Whether a live process holds the run folder's lock (engine.checkpointing.RunFolderLock)."""
    import fcntl

    with open(path) as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
        return False


EXIT_WITH_LIVE_WORKERS = """
import os, signal, sys, torch
from maetransfer.engine import ShieldedDataLoader
batches = iter(ShieldedDataLoader(list(range(1000)), batch_size=2, num_workers=2))
next(batches)
for worker in batches._workers:
    os.kill(worker.pid, signal.SIGTERM)  # blocked in the workers: they go on
print(sum(next(batches).tolist()), all(worker.is_alive() for worker in batches._workers))
sys.exit(0)  # with the iterator and its workers alive
"""


def test_shielded_loader_workers_ignore_stop_signals_and_do_not_hold_up_the_exit():
    """multiprocessing ends live daemonic workers at exit with SIGTERM and waits for them; shielded ones are killed
    instead, so a program that exits with a loader's iterator alive (an exception kept it) does not hang."""
    started = time.time()
    run = subprocess.run([sys.executable, "-c", EXIT_WITH_LIVE_WORKERS], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert (run.returncode, run.stdout) == (0, "5 True\n"), run.stderr
    assert "killed by signal" not in run.stderr
    assert time.time() - started < 30
