"""The tools on a real Slurm cluster (`bash .ci/start_slurm` starts a one-node one; these tests skip without it):
`srun -n 2` is one 2-process job equal to torchrun bit for bit, tools/submit.py and tools/slurm_job.sbatch run jobs to
the end, a job stopped by the time-limit warning or by `scontrol requeue` is requeued and ends with the weights of an
uninterrupted run, and a killed job submitted again resumes from its last checkpoint."""
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maetransfer.data.coco import write_demo_coco
from maetransfer.engine.slurm import expand_hostlist
from test_det_tool import _args as det_args

ROOT = Path(__file__).resolve().parent.parent
# The job's python is the one running the tests (sbatch passes the environment on).
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "PYTHONUNBUFFERED": "1"}
TINY_PRETRAIN = ["model.arch=vit_micro", "model.patch_size=8", "model.img_size=32", "model.decoder_embed_dim=32",
                 "model.decoder_depth=1", "model.decoder_num_heads=4", "train.batch_size=4", "train.log_period=1",
                 "train.warmup_epochs=1", "train.amp=none", "data.num_preview=2", "train.num_threads=1"]
# 16 images / (2 tasks x batch 4) = 2 updates an epoch
SHORT = [*TINY_PRETRAIN, "train.num_workers=0", "train.epochs=3"]
LONG = [*TINY_PRETRAIN, "train.num_workers=2", "train.epochs=20"]  # 40 updates, long enough to be stopped mid-way
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states)


needs_slurm = pytest.mark.skipif(not _cluster_up(), reason="no Slurm cluster here (bash .ci/start_slurm starts a "
                                                           "one-node one)")


def test_hostlists_expand_as_slurm_expands_them():
    cases = {"gpu[01-04,07]": ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"],
             "vm": ["vm"], "a[8-10],login1": ["a8", "a9", "a10", "login1"],
             "rack[1-2]-n[01-02]": ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"],
             "node[009-011],gpu-a[1,3]": ["node009", "node010", "node011", "gpu-a1", "gpu-a3"]}
    for hostlist, hosts in cases.items():
        assert expand_hostlist(hostlist) == hosts, hostlist
        if shutil.which("scontrol"):  # Slurm's own expansion agrees
            out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True,
                                 check=True).stdout.split()
            assert out == hosts, hostlist


def _weights(folder):
    return torch.load(Path(folder) / "checkpoint.pth", weights_only=True)


def _assert_same_weights(folder, reference):
    got, want = _weights(folder), _weights(reference)
    assert got["iter"] == want["iter"]
    for key, value in want["model"].items():
        assert torch.equal(value, got["model"][key]), key


def _records(folder):
    return [json.loads(line)["iter"] for line in (Path(folder) / "log.jsonl").read_text().splitlines()]


_PORTS = iter(range(29771, 29799))


def _torchrun(tool_args, folder):
    """The reference: the same command as a 2-process torchrun run."""
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={next(_PORTS)}", *tool_args, "--output-dir", str(folder)],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)
    return folder


def _job(job_id):
    fields = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", fields))


def _wait_for_job(job_id, restarts=0, timeout=300):
    """Wait until the job has ended (after `restarts` requeues); returns its scontrol record."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = _job(job_id)
        if job.get("JobState") in FINISHED and int(job.get("Restarts", 0)) >= restarts:
            return job
        time.sleep(0.5)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} did not end within {timeout} s: {_job(job_id).get('JobState')}")


def _wait_for_records(folder, count, job_id, timeout=180):
    log, deadline = Path(folder) / "log.jsonl", time.time() + timeout
    while time.time() < deadline:
        if log.is_file() and len(read_log(log).splitlines()) >= count:
            return
        if _job(job_id).get("JobState") in FINISHED:
            break
        time.sleep(0.05)
    raise AssertionError(f"{log} did not reach {count} records; job {job_id}: {_job(job_id).get('JobState')}")


def read_log(path: Path) -> str:
    """A job's output file. Slurm merges the output of a job's tasks into it in chunks, which can split a multi-byte
    character (a progress bar's block); such bytes are replaced, not a UnicodeDecodeError."""
    return path.read_text(errors="replace")


def _sbatch(tmp_path, tool_args, stderr_apart=False, nodes=1):
    """Submit tools/slurm_job.sbatch with 2 tasks on `nodes` nodes; returns (job id, its log file). With `stderr_apart`
    the log holds stdout alone (stderr goes to slurm-<id>.err): Slurm merges the two streams in chunks, which can cut
    a printed line in two, and the caller looks for whole lines."""
    log = tmp_path / "slurm-%j.out"
    apart = ["-e", str(tmp_path / "slurm-%j.err")] if stderr_apart else []
    job_id = subprocess.run(["sbatch", "--parsable", "-N", str(nodes), "-n", "2", "-o", str(log), *apart,
                             "tools/slurm_job.sbatch", *tool_args], cwd=ROOT, env=ENV, check=True, capture_output=True,
                            text=True).stdout.strip()
    return job_id, Path(str(log).replace("%j", job_id))


def _submit(tool_args, nodes=1):
    """tools/submit.py with 2 tasks on `nodes` nodes; returns (job id, the log of its first task)."""
    out = subprocess.run([sys.executable, "tools/submit.py", "--nodes", str(nodes), "--tasks-per-node", str(2 // nodes),
                          "--time", "10", *tool_args], cwd=ROOT, env=ENV, check=True, capture_output=True,
                         text=True).stdout
    job_id = re.match(r"submitted job (\d+): ", out).group(1)
    log = re.search(r"follow it with: tail -f (\S+)", out).group(1)
    return job_id, Path(log)


@pytest.fixture(scope="module")
def pretrain_references(image_dir, tmp_path_factory):
    """torchrun runs of the short and the long pretraining."""
    folder = tmp_path_factory.mktemp("torchrun")
    return {name: _torchrun(["tools/pretrain_mae.py", f"data.root={image_dir}", *overrides], folder / name)
            for name, overrides in (("short", SHORT), ("long", LONG))}


@needs_slurm
def test_srun_two_tasks_pretrain_as_one_job_equal_to_torchrun(image_dir, pretrain_references, tmp_path):
    run = subprocess.run(["srun", "-n", "2", sys.executable, "tools/pretrain_mae.py", f"data.root={image_dir}", *SHORT,
                          "--output-dir", str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    _assert_same_weights(tmp_path, pretrain_references["short"])
    assert _records(tmp_path) == [1, 2, 3, 4, 5, 6]  # each record once: 16 images, 8 a step
    assert run.stdout.count("MAE pretraining: 6 iterations of 8 images") == 1  # one banner for the job
    assert run.stdout.count("encoder written to") == 1


@needs_slurm
def test_srun_two_tasks_detection_as_one_job_equal_to_torchrun(tmp_path):
    data = write_demo_coco(tmp_path / "coco", num_train=8, num_val=2, size=64, max_shapes=2)
    tool_args = ["tools/train_det.py", *det_args(data, tmp_path / "unused")[2:]]
    _torchrun(tool_args, tmp_path / "torchrun")
    run = subprocess.run(["srun", "-n", "2", sys.executable, *tool_args, "--output-dir", str(tmp_path / "srun")],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    _assert_same_weights(tmp_path / "srun", tmp_path / "torchrun")
    assert _records(tmp_path / "srun")[:3] == [1, 2, 3]
    assert run.stdout.count("[1/2] training: 3 iterations of 4 images") == 1
    assert run.stdout.count("bbox AP ") == 1
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("srun", "torchrun")]
    assert metrics[0] == metrics[1]


@needs_slurm
def test_tasks_that_cannot_meet_end_with_one_line(image_dir, tmp_path):
    """Task 1 of the step never joins: task 0 gives up after train.dist_timeout (3 s) naming where it waited."""
    programs = tmp_path / "tasks.conf"
    programs.write_text(f"0 {sys.executable} tools/pretrain_mae.py data.root={image_dir} {' '.join(SHORT)} "
                        f"train.dist_timeout=0.05 --output-dir {tmp_path / 'run'}\n1 true\n")
    run = subprocess.run(["srun", "-n", "2", "--multi-prog", str(programs)], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    assert re.fullmatch(r"error: joining the process group at \S+:\d+ failed within train\.dist_timeout=0\.05 minutes: "
                        r"Timed out after \d+ seconds waiting for clients\. 1/2 clients joined\.", lines[0])
    assert not (tmp_path / "run").exists()


@needs_slurm
def test_submit_runs_a_job_to_the_end_with_its_logs_in_the_run_folder(image_dir, pretrain_references, tmp_path):
    job_id, log = _submit(["tools/pretrain_mae.py", f"data.root={image_dir}", *SHORT, "--output-dir", str(tmp_path)])
    assert log == tmp_path / "slurm" / f"{job_id}_0_log.out"
    assert _wait_for_job(job_id)["JobState"] == "COMPLETED"
    _assert_same_weights(tmp_path, pretrain_references["short"])
    assert "encoder written to" in read_log(log)


def test_submit_dry_run_shows_the_job_and_writes_nothing(tmp_path):
    pytest.importorskip("submitit")
    out = subprocess.run([sys.executable, "tools/submit.py", "--nodes", "2", "--gpus-per-node", "8",
                          "--cpus-per-task", "10", "--mem-gb", "320", "--time", "2880", "--partition", "gpu",
                          "--account", "vision", "--sbatch", "exclusive", "--dry-run", "tools/train_det.py",
                          "--config", "configs/det/mask_rcnn_vit_base_coco.yaml", "--output-dir",
                          str(tmp_path / "run")],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --mem=327680MB", "#SBATCH --time=2880",
                 "#SBATCH --partition=gpu", "#SBATCH --account=vision", "#SBATCH --exclusive", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@120", f"#SBATCH --output={tmp_path / 'run' / 'slurm'}/%j_0_log.out"):
        assert line in out.splitlines(), line
    run = tmp_path / "run"
    assert f"tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml --output-dir {run}" in out
    assert not (tmp_path / "run").exists()


REQUEUES = {
    # tools/slurm_job.sbatch: the time-limit warning of its --signal (USR1) sent early; the run requeues the job
    "time-limit warning": (lambda tmp_path, args, nodes: _sbatch(tmp_path, args, nodes=nodes),
                           ["scancel", "--signal=USR1"],
                           r"stopped by SIGUSR1 at iteration (\d+) of 40; checkpoint \S+ written; requeueing Slurm job "
                           r"{job}, which resumes from there"),
    # tools/submit.py: `scontrol requeue`, as a preemption: SIGTERM to every process of the job, Slurm requeues it
    "scontrol requeue": (lambda tmp_path, args, nodes: _submit(args, nodes), ["scontrol", "requeue"],
                         r"stopped by SIGTERM at iteration (\d+) of 40; checkpoint \S+ written; a requeued or "
                         r"preempted job resumes from there"),
}


@needs_slurm
@pytest.mark.parametrize("interruption", REQUEUES)
def test_a_job_requeued_mid_run_ends_as_an_uninterrupted_run(interruption, image_dir, pretrain_references, tmp_path):
    """Stopped mid-run with two loader workers per task: the job is requeued once, resumes at the iteration where it
    stopped, writes each log record once and ends with the uninterrupted run's weights."""
    requeue_mid_run(interruption, image_dir, pretrain_references["long"], tmp_path)


def requeue_mid_run(interruption, image_dir, reference, tmp_path, nodes=1):
    """The long pretraining as a job of 2 tasks on `nodes` nodes, stopped after 3 records as REQUEUES[interruption]
    says: asserts that it is requeued once, resumes where it stopped, writes each record once and ends with the
    weights of `reference`."""
    submit, interrupt, stop_line = REQUEUES[interruption]
    run = tmp_path / "run"
    job_id, log = submit(tmp_path, ["tools/pretrain_mae.py", f"data.root={image_dir}", *LONG, "--output-dir", str(run)],
                         nodes)
    _wait_for_records(run, 3, job_id)
    subprocess.run([*interrupt, job_id], check=True)
    job = _wait_for_job(job_id, restarts=1)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1")
    text = read_log(log)
    stop = re.search(stop_line.format(job=job_id), text)
    assert stop, text
    checkpoint = re.escape(str(run / "checkpoint.pth"))
    assert re.search(rf"resumed from {checkpoint} at epoch \d+, iteration {stop[1]}\n", text)
    _assert_same_weights(run, reference)
    assert _records(run) == list(range(1, 41))


@needs_slurm
def test_a_killed_job_submitted_again_resumes_from_its_last_checkpoint(image_dir, pretrain_references, tmp_path):
    """SIGKILL to every process of the job: nothing is written then; the same command with --resume auto continues
    from the last periodic checkpoint (every epoch) and ends as the uninterrupted run."""
    tool_args = ["tools/pretrain_mae.py", f"data.root={image_dir}", *LONG, "--output-dir", str(tmp_path / "run")]
    job_id, _ = _sbatch(tmp_path, tool_args)
    _wait_for_records(tmp_path / "run", 9, job_id)
    subprocess.run(["scancel", "--signal=KILL", "--full", job_id], check=True)
    assert _wait_for_job(job_id)["JobState"] in ("FAILED", "CANCELLED")
    deadline = time.time() + 60  # the job ends with its batch script; its tasks may take a moment more to be gone
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, f"job {job_id} is still completing"
        time.sleep(0.2)
    # proctrack/linuxproc may report the job gone while its training process still ends: it is gone once the lock it
    # holds on the run folder is free
    with open(tmp_path / "run" / ".run.lock", "a+") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.time() < deadline, f"the training process of job {job_id} still runs"
                time.sleep(0.2)
        fcntl.flock(lock, fcntl.LOCK_UN)
    last = _weights(tmp_path / "run")["iter"]
    assert 8 <= last < 40

    again, log = _sbatch(tmp_path, [*tool_args, "--resume", "auto"], stderr_apart=True)
    assert _wait_for_job(again)["JobState"] == "COMPLETED"
    checkpoint = tmp_path / "run" / "checkpoint.pth"
    text = read_log(log)
    # the last checkpoint is the periodic one at an epoch's end (epoch last // 2), or one written on the way out
    # after the epoch's last update (epoch last // 2 - 1, all of its batches done) when the tasks saw Slurm's SIGTERM
    # of the job's end before its SIGKILL
    assert re.search(rf"resumed from {re.escape(str(checkpoint))} at epoch ({last // 2 - 1}|{last // 2}), "
                     rf"iteration {last}\n", text), text[-3000:]
    _assert_same_weights(tmp_path / "run", pretrain_references["long"])


@needs_slurm
def test_plain_python_srun_one_task_and_torchrun_inside_an_allocation_keep_working(image_dir, pretrain_references,
                                                                                   tmp_path):
    """An sbatch job of 2 tasks whose script runs the tool itself (one process, although SLURM_NTASKS=2), with
    `srun -n 1` (one process), and under torchrun (its 2 workers, equal to torchrun outside Slurm)."""
    tool = f"tools/pretrain_mae.py data.root={image_dir} {' '.join(SHORT)}"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nset -e\n{sys.executable} {tool} --output-dir {tmp_path / 'python'}\n"
                      f"srun -n 1 {sys.executable} {tool} --output-dir {tmp_path / 'srun1'}\n"
                      f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port {next(_PORTS)} "
                      f"{tool} --output-dir {tmp_path / 'torchrun'}\n")
    job_id = subprocess.run(["sbatch", "--parsable", "-n", "2", "-o", str(tmp_path / "job.out"), str(script)],
                            cwd=ROOT, env=ENV, check=True, capture_output=True, text=True).stdout.strip()
    assert _wait_for_job(job_id)["JobState"] == "COMPLETED", read_log(tmp_path / "job.out")
    text = read_log(tmp_path / "job.out")
    assert text.count("MAE pretraining: 12 iterations of 4 images") == 2  # python and srun -n 1: one process each
    assert text.count("MAE pretraining: 6 iterations of 8 images") == 1  # torchrun: 2 processes
    _assert_same_weights(tmp_path / "python", tmp_path / "srun1")
    _assert_same_weights(tmp_path / "torchrun", pretrain_references["short"])
