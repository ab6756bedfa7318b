"""The tools across two nodes: nodeA and nodeB are Linux namespaces with their own network, hostname and slurmd
(`bash .ci/start_two_nodes`, which these tests run first; they skip with its one line where it cannot start). Each
multi-node run (one torchrun per node, `srun -N 2`, a requeued `sbatch -N 2` or `tools/submit.py --nodes 2` job) ends
with the weights of a one-node 2-process torchrun run, bit for bit, each log record and banner written once; a node
lost mid-run ends the survivor with one line within seconds, and the job submitted again with --resume auto ends as
the uninterrupted run."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import test_slurm
from maetransfer.data.coco import write_demo_coco
from test_det_tool import _args as det_args
from test_slurm import (LONG, SHORT, _assert_same_weights, _records, _sbatch, _torchrun, _wait_for_job,
                        _wait_for_records, read_log, requeue_mid_run)

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / ".ci" / "start_two_nodes"
CLIENTS = Path("/run/maetransfer-two-nodes")  # Slurm's clients for the cluster (bin/) and its slurm.conf
BANNER = "MAE pretraining: 6 iterations of 8 images"
_PORTS = iter(range(29801, 29830))
# The one-node 2-process torchrun runs of the short and the long pretraining, shared with tests/test_slurm.py's tests
pretrain_references = test_slurm.pretrain_references


@pytest.fixture(scope="module", autouse=True)
def two_nodes():
    """The cluster up, and Slurm's clients of this module's commands (and of test_slurm's helpers) on it."""
    try:
        start = subprocess.run(["bash", str(CLUSTER)], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("two-node Slurm not started within 180 s")
    if start.returncode != 0:
        pytest.skip(start.stdout.strip() or start.stderr.strip())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{CLIENTS / 'bin'}{os.pathsep}{test_slurm.ENV['PATH']}")
        patch.setenv("SLURM_CONF", str(CLIENTS / "slurm.conf"))
        patch.setattr(test_slurm, "ENV", {**os.environ, "PYTHONUNBUFFERED": "1"})
        yield


def _on(node, *command):
    return ["bash", str(CLUSTER), "on", node, *command]


def _processes(node):
    """{pid: command line} of the live processes on `node` (a zombie's command line is empty)."""
    listed = subprocess.run(["ip", "netns", "pids", f"maetransfer-{node}"], capture_output=True, text=True).stdout
    processes = {}
    for pid in listed.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if argv[0]:
            processes[int(pid)] = [arg.decode() for arg in argv]
    return processes


def _training(node):
    """The training processes on `node` (python running the pretraining tool, and its loader workers)."""
    return [pid for pid, argv in _processes(node).items()
            if Path(argv[0]).name.startswith("python") and "tools/pretrain_mae.py" in argv]


def _running(pid):
    try:  # a zombie has ended (where nothing reaps orphans, it stays one)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_one_torchrun_per_node_equals_one_node(rendezvous, image_dir, pretrain_references, tmp_path):
    port = next(_PORTS)
    runs = []
    for node_rank, node in enumerate(("nodeA", "nodeB")):
        meet = (["--node_rank", str(node_rank), "--master_addr", "nodeA", "--master_port", str(port)]
                if rendezvous == "static" else
                ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"nodeA:{port}", "--rdzv_id", tmp_path.name])
        runs.append(subprocess.Popen(
            _on(node, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", *meet,
                "tools/pretrain_mae.py", f"data.root={image_dir}", *SHORT, "--output-dir", str(tmp_path)),
            cwd=ROOT, env=test_slurm.ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    _assert_same_weights(tmp_path, pretrain_references["short"])
    assert _records(tmp_path) == [1, 2, 3, 4, 5, 6]
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count(BANNER) == 1 and stdout.count("encoder written to") == 1


def _srun_two_nodes(tool_args, output_dir):
    run = subprocess.run(["srun", "-N", "2", "-n", "2", sys.executable, *tool_args, "--output-dir", str(output_dir)],
                         cwd=ROOT, env=test_slurm.ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_srun_on_two_nodes_pretrain_equals_one_node(image_dir, pretrain_references, tmp_path):
    stdout = _srun_two_nodes(["tools/pretrain_mae.py", f"data.root={image_dir}", *SHORT], tmp_path)
    _assert_same_weights(tmp_path, pretrain_references["short"])
    assert _records(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert stdout.count(BANNER) == 1 and stdout.count("encoder written to") == 1


def test_srun_on_two_nodes_detection_equals_one_node(tmp_path):
    data = write_demo_coco(tmp_path / "coco", num_train=8, num_val=2, size=64, max_shapes=2)
    tool_args = ["tools/train_det.py", *det_args(data, tmp_path / "unused")[2:]]
    _torchrun(tool_args, tmp_path / "torchrun")
    stdout = _srun_two_nodes(tool_args, tmp_path / "srun")
    _assert_same_weights(tmp_path / "srun", tmp_path / "torchrun")
    assert _records(tmp_path / "srun")[:3] == [1, 2, 3]
    assert stdout.count("[1/2] training: 3 iterations of 4 images") == 1 and stdout.count("bbox AP ") == 1
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("srun", "torchrun")]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("interruption", test_slurm.REQUEUES)
def test_a_two_node_job_requeued_mid_run_ends_as_one_node(interruption, image_dir, pretrain_references, tmp_path):
    """sbatch -N 2 stopped by the time-limit warning, tools/submit.py --nodes 2 by `scontrol requeue` (SIGTERM)."""
    requeue_mid_run(interruption, image_dir, pretrain_references["long"], tmp_path, nodes=2)


def test_a_node_lost_mid_run_ends_the_other_with_one_line_and_the_job_submitted_again_ends_as_one_node(
        image_dir, pretrain_references, tmp_path, monkeypatch):
    """Every process of nodeB (its slurmd, the job's step and training process) is killed with SIGKILL after a
    checkpoint: nodeA's training process ends within seconds with one line naming rank 1 on nodeB, Slurm finds nodeB
    down and ends the job (NODE_FAIL), and once nodeB is back the same command submitted with --resume auto resumes
    from that checkpoint and ends with the uninterrupted run's weights. (Submitted without --requeue: a job requeued
    after a node failure gets its old job and step ids, and the first run's srun, still ending that step on nodeA,
    can stop the new one.)"""
    monkeypatch.setitem(test_slurm.ENV, "SBATCH_NO_REQUEUE", "1")  # over the script's #SBATCH --requeue
    run = tmp_path / "run"
    tool_args = ["tools/pretrain_mae.py", f"data.root={image_dir}", *LONG, "--output-dir", str(run)]
    job_id, log = _sbatch(tmp_path, tool_args, stderr_apart=True, nodes=2)
    _wait_for_records(run, 12, job_id)  # past the checkpoint of epoch 5 (iteration 10)
    survivors = _training("nodeA")
    assert survivors and _training("nodeB")
    lost = time.time()
    for pid in _processes("nodeB"):
        os.kill(pid, signal.SIGKILL)
    while any(_running(pid) for pid in survivors):
        assert time.time() - lost < 60, "nodeA's training process did not end within 60 s of losing nodeB"
        time.sleep(0.1)
    ended_in = time.time() - lost
    print(f"nodeA's training process ended {ended_in:.1f} s after nodeB was lost")  # the figure docs/clusters.md quotes
    assert _wait_for_job(job_id, timeout=120)["JobState"] == "NODE_FAIL"  # SlurmdTimeout: 10 s on the test cluster
    err = read_log(log.with_suffix(".err"))
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    checkpoint = run / "checkpoint.pth"
    assert len(errors) == 1 and "Traceback" not in err, err
    line = re.fullmatch(rf"error: rank 1 on nodeB lost \(connection (closed|reset) by peer\) in iteration \d+ of 40; "
                        rf"the last checkpoint is {re.escape(str(checkpoint))} \(iteration (\d+)\): run the same "
                        rf"command with --resume auto to continue", errors[0])
    assert line, errors[0]
    assert ended_in < 30

    assert subprocess.run(["bash", str(CLUSTER)], capture_output=True, text=True, timeout=180).returncode == 0  # back
    again, log = _sbatch(tmp_path, [*tool_args, "--resume", "auto"], stderr_apart=True, nodes=2)
    assert _wait_for_job(again)["JobState"] == "COMPLETED", read_log(log.with_suffix(".err"))[-3000:]
    last = int(line[2])  # a checkpoint every 5 epochs of 2 iterations
    assert last % 10 == 0 and f"resumed from {checkpoint} at epoch {last // 2}, iteration {last}\n" in read_log(log)
    _assert_same_weights(run, pretrain_references["long"])
    assert _records(run) == list(range(1, 41))
