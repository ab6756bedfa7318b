"""tools/transfer_report.py end to end on a suite of tiny jobs (detection, segmentation, classification and a row whose
data is broken) for two encoders: the report run is killed while its second job trains and run again. Checked against
the jobs' own files, read here independently: finished jobs are read and not rerun, the stopped one resumes from its
checkpoint, the report's numbers are those of each metrics.json, the failed row is marked with its log, the HTML
is self-contained and renders in headless Chromium. Bad input ends with one line and leaves the report as it was."""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from maetransfer.data.ade import write_demo_ade20k
from maetransfer.data.cls import write_demo_data
from maetransfer.data.coco import write_demo_coco
from maetransfer.models import build_vit
from maetransfer.report.suite import load_references, load_suite
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
report_tool = load_tool("transfer_report")

# one tiny encoder for every task: 32 wide, 4 blocks, 2 heads, patch 8
MODEL = ["model.arch=vit_micro", "model.embed_dim=32", "model.depth=4", "model.num_heads=2", "model.patch_size=8"]
DET = [*MODEL, "data.demo=false", "train.max_iters=6", "train.batch_size=2", "train.num_workers=0",
       "train.checkpoint_period=1", "train.log_period=1", "model.rpn_post_nms_top_n_test=20", "model.img_size=64",
       "model.pretrain_img_size=32", "model.window_size=4", "model.global_blocks=[1,3]", "model.out_channels=32",
       "model.head_dim=32", "model.box_fc_dim=64", "model.anchor_sizes=[8,16,32,64]"]
SEG = [*MODEL, "model.img_size=64", "model.channels=16", "model.aux_channels=8", "data.demo=false",
       "data.scale=[256,64]", "data.crop_size=[64,64]", "eval.crop_size=[64,64]", "eval.stride=[43,43]",
       "eval.num_vis=2", "train.max_iters=2", "train.batch_size=2", "train.warmup_iters=1", "train.num_workers=0",
       "train.log_period=1"]
CLS = [*MODEL, "model.img_size=32", "data.demo=false", "train.epochs=2", "train.batch_size=8",
       "train.warmup_epochs=0", "eval.batch_size=8", "train.num_workers=0", "train.log_period=1", "train.eval_period=1"]
SUITE = {"description": "Tiny jobs of the three tools.",
         "data_roots": {"coco": "tiny COCO", "ade20k": "tiny ADE20K", "cls": "tiny iNat", "broken": "bad val.json"},
         "jobs": [{"name": "det", "title": "Detection", "tool": "train_det", "config": "configs/det/demo.yaml",
                   "data": "coco", "overrides": DET},
                  {"name": "seg", "title": "Segmentation", "tool": "train_seg", "config": "configs/seg/demo.yaml",
                   "data": "ade20k", "overrides": SEG},
                  {"name": "cls", "title": "Classification", "tool": "train_cls", "config": "configs/cls/demo.yaml",
                   "data": "cls", "overrides": CLS},
                  {"name": "broken", "title": "Broken data", "tool": "train_cls", "config": "configs/cls/demo.yaml",
                   "data": "broken", "overrides": CLS}]}
# metrics.json entries of each task's table, in its column order (docs/report.md)
COLUMNS = {"det": [("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("segm", "AP"), ("segm", "AP50"),
                   ("segm", "AP75")],
           "seg": [("mIoU",), ("mAcc",), ("aAcc",)], "cls": [("top1",), ("top5",), ("mean_class_acc",)]}
HEADLINE = {"det": [("bbox", "AP"), ("segm", "AP")], "seg": [("mIoU",)], "cls": [("top1",)]}


def _lookup(metrics, path):
    for key in path:
        metrics = metrics[key]
    return metrics


class Run:
    """The report folder and what the two report commands printed."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.out = tmp / "report"
        self.encoder = tmp / "encoder.pth"
        self.suite = tmp / "tiny.yaml"
        self.data = [f"data.coco={tmp / 'coco'}", f"data.ade20k={tmp / 'ADE'}", f"data.cls={tmp / 'cls'}",
                     f"data.broken={tmp / 'broken'}"]
        self.args = ["--suite", str(self.suite), "--encoder", f"mae={self.encoder}", "--encoder", "random=",
                     "--output-dir", str(self.out), *self.data]

    def command(self, *extra):
        return [sys.executable, str(ROOT / "tools" / "transfer_report.py"), *self.args, *extra]

    def job(self, encoder: str, name: str) -> Path:
        return self.out / "runs" / encoder / name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    r = Run(tmp)
    write_demo_coco(tmp / "coco", num_train=6, num_val=3, size=64, max_shapes=2)
    write_demo_ade20k(tmp / "ADE", 8, 3, 64)
    write_demo_data(tmp / "cls", n_train=16, n_val=8, size=32, seed=1)
    shutil.copytree(tmp / "cls", tmp / "broken")
    (tmp / "broken" / "val.json").write_text("{not json")
    torch.manual_seed(1)  # not train.seed 0, with which the random-init runs draw their encoder
    encoder = build_vit("vit_micro", patch_size=8, embed_dim=32, depth=4, num_heads=2, img_size=64)
    torch.save({"model": encoder.state_dict()}, r.encoder)
    OmegaConf.save(OmegaConf.create(SUITE), r.suite)

    # First run, killed (SIGKILL, the report alone) once the second job has written a checkpoint.
    with open(tmp / "first.out", "w") as log:
        first = subprocess.Popen(r.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not (r.job("random", "det") / "checkpoint.pth").is_file():
            assert first.poll() is None and time.time() < deadline, (tmp / "first.out").read_text()[-3000:]
            time.sleep(0.2)
        first.kill()
        first.wait()
    r.first_mae_det = {name: (r.job("mae", "det") / name).read_bytes() for name in ("metrics.json", "log.jsonl")}
    r.first_mae_det_record = (r.out / "runs" / "mae" / "det.json").read_bytes()

    second = subprocess.run(r.command(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    r.second = second
    return r


def test_finished_jobs_are_read_and_a_stopped_one_resumes(run):
    assert "1 of 8 jobs already done; running 7" in run.second.stdout, run.second.stdout
    for name, content in run.first_mae_det.items():
        assert (run.job("mae", "det") / name).read_bytes() == content, name
    assert (run.out / "runs" / "mae" / "det.json").read_bytes() == run.first_mae_det_record
    record = json.loads((run.out / "runs" / "random" / "det.json").read_text())
    assert record["state"] == "done" and len(record["parts"]) == 2  # the killed part and the resumed one
    log = (run.out / "runs" / "random" / "det.log").read_text()
    assert re.search(r"resumed from \S+checkpoint.pth at epoch \d+, iteration [1-6]", log), log[-2000:]


def test_the_reports_numbers_are_the_jobs_metrics(run):
    report = json.loads((run.out / "report.json").read_text())
    markdown = (run.out / "report.md").read_text()
    jobs = {(j["encoder"], j["job"]): j for j in report["jobs"]}
    assert len(jobs) == 8
    for name, columns in COLUMNS.items():
        metrics = {enc: json.loads((run.job(enc, name) / "metrics.json").read_text()) for enc in ("mae", "random")}
        for enc, values in metrics.items():
            assert jobs[enc, name]["state"] == "done"
            for path in columns:
                value = _lookup(values, path)
                assert jobs[enc, name]["metrics"][".".join(path)] == value, (enc, name, path)
            cells = " | ".join("–" if _lookup(values, p) is None else f"{_lookup(values, p):.2f}" for p in columns)
            row = next(line for line in markdown.splitlines() if f"| {enc} | {cells} |" in line)
            if enc == "random":  # the delta to the first encoder, on the headline metrics
                for path in HEADLINE[name]:
                    assert f"| {_lookup(values, path) - _lookup(metrics['mae'], path):+.2f} |" in row, row


def test_a_failed_job_is_marked_with_its_log_and_the_others_run(run):
    assert run.second.returncode == 1
    errors = run.second.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: 2 of 8 jobs failed (mae/broken: log "), errors
    markdown = (run.out / "report.md").read_text()
    for enc in ("mae", "random"):
        log = run.out / "runs" / enc / "broken.log"
        assert "val.json: not valid JSON" in log.read_text()
        row = next(line for line in markdown.splitlines() if f"| {enc} |" in line and "failed (exit 1)" in line)
        assert "val.json: not valid JSON" in row and f"log `{log}`" in row
    states = [j["state"] for j in json.loads((run.out / "report.json").read_text())["jobs"]]
    assert states.count("done") == 6 and states.count("failed") == 2


def test_status_prints_where_each_job_is(run, capsys):
    report_tool.main([*run.args, "--status"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"report folder {run.out}"
    states = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert states == {f"{enc}/{job}": "failed" if job == "broken" else "done"
                      for job in ("det", "seg", "cls", "broken") for enc in ("mae", "random")}
    mae_seg = json.loads((run.job("mae", "seg") / "metrics.json").read_text())
    assert f"mIoU {mae_seg['mIoU']:.2f}" in next(line for line in lines if line.startswith("mae/seg "))


def _snapshot(folder: Path):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".report.lock"}


@pytest.mark.parametrize("case", ["suite", "data", "encoder", "labels", "other command", "override"])
def test_bad_input_is_one_line_and_leaves_the_report_as_it_was(run, case, capsys):
    before = _snapshot(run.out)
    garbage = run.tmp / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    typo = run.tmp / "typo.yaml"
    OmegaConf.save(OmegaConf.create({"jobs": [{"name": "typo", "tool": "train_cls", "config": "configs/cls/demo.yaml",
                                               "overrides": ["train.nope=1"]}]}), typo)
    args, expected = {
        "suite": (["--suite", "nope", "--output-dir", str(run.out)],
                  "error: unknown suite 'nope': choose one of demo, paper_vit_base, paper_vit_huge, paper_vit_large "
                  "or give a suite's YAML file"),
        "data": ([*run.args, f"data.coco={run.tmp / 'missing'}"], f"error: data.coco={run.tmp / 'missing'}: no such "
                                                                  "folder"),
        "encoder": ([*run.args, "--encoder", f"bad={garbage}"], f"error: --encoder bad={garbage}: {garbage}: "),
        "labels": ([*run.args, "--encoder", "mae=demo"], "error: --encoder label(s) mae given twice"),
        "other command": (["--suite", str(run.suite), "--encoder", "mae=", "--output-dir", str(run.out), *run.data],
                          f"error: {run.job('mae', 'det')} holds a run of another command"),
        "override": (["--suite", str(typo), "--encoder", "random=", "--output-dir", str(run.out)],
                     "error: random/typo: command line: unknown config key 'train.nope'"),
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        report_tool.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(expected) and err.count("\n") == 1, err
    assert _snapshot(run.out) == before


def test_the_html_is_self_contained_and_renders_in_chromium(run, tmp_path):
    page = (run.out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) >= 3 + 2 + 4 + 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="https?://', page) and "<script" not in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium (Debian: apt-get install -y chromium)")
    shot = tmp_path / "report.png"
    # no network at all: the page must render from itself (and Chromium's own background traffic is switched off)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2400", f"--screenshot={shot}",
                    (run.out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (2400, 1400, 3)
    # the curves' encoder colours (#1f77b4, #d62728) are on the page: the embedded plots were decoded and drawn
    for colour in ((31, 119, 180), (214, 39, 40)):
        assert (np.abs(pixels - colour).sum(axis=2) < 30).sum() > 50, colour


@pytest.mark.parametrize("size", ["base", "large", "huge"])
def test_paper_suites_list_every_published_row_with_its_command(size, tmp_path):
    """Without data roots nothing runs: every row of the size is listed as skipped (or without a recipe) under the
    paper's row, with the command that fills it."""
    published = {key for key in load_references() if f"_vit_{size}" in key}
    suite = load_suite(f"paper_vit_{size}")
    assert {job.reference.key for job in suite.jobs if job.reference} == published
    report_tool.main(["--suite", f"paper_vit_{size}", "--output-dir", str(tmp_path)])
    markdown = (tmp_path / "report.md").read_text()
    lines, commands = markdown.splitlines(), markdown.replace(" \\\n    ", " ")  # commands are wrapped
    for job in suite.jobs:
        status = f"{job.config} does not exist" if not (ROOT / job.config).is_file() else f"data.{job.data} not given"
        first = next(i for i, line in enumerate(lines) if line.startswith(f"| {job.title} | "))
        row = lines[first + 1] if job.reference else lines[first]
        assert row.split(" | ")[1] == "mae" and row.endswith(f"| {status} |"), row
        assert f"tools/{job.tool}.py --config {job.config} --output-dir {tmp_path}/runs/mae/{job.name}" in commands
        if job.reference:
            columns = COLUMNS[job.tool.removeprefix("train_")]
            cells = [f"{job.reference.values['.'.join(p)]:.2f}" if ".".join(p) in job.reference.values else ""
                     for p in columns]
            assert lines[first].startswith(" | ".join([f"| {job.title}", f"paper ({job.reference.source})", *cells]))


def test_published_numbers_agree_with_the_targets_the_configs_state():
    """paper_results.yaml against each recipe's own header comment ('Target top-1: 83.6', 'box AP 51.6, mask AP
    45.9'), written separately from it."""
    for key, reference in load_references().items():
        path = ROOT / key
        if not path.is_file():  # a published row without a recipe (the suites list it as such)
            continue
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        for metric, value in reference.values.items():
            assert f"{value:.1f}" in header, (key, metric, value)


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states)


@pytest.mark.skipif(not _slurm_up(), reason="no Slurm cluster here (bash .ci/start_slurm starts a one-node one)")
def test_the_slurm_launcher_submits_every_job_at_once_and_reports_them(run, tmp_path):
    pytest.importorskip("submitit")
    suite = tmp_path / "slurm.yaml"
    OmegaConf.save(OmegaConf.create({"data_roots": {"cls": "tiny iNat"}, "slurm": {"time_min": 10, "cpus_per_task": 1},
                                     "jobs": [job for job in SUITE["jobs"] if job["name"] == "cls"]}), suite)
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "transfer_report.py"), "--suite", str(suite),
                             "--encoder", f"mae={run.encoder}", "--encoder", "random=", "--output-dir", str(out),
                             f"data.cls={run.tmp / 'cls'}", "--launcher", "slurm", "--poll", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("submitted Slurm job") == 2 and "2 job(s) submitted" in result.stdout
    report = {j["encoder"]: j for j in json.loads((out / "report.json").read_text())["jobs"]}
    for enc in ("mae", "random"):
        record = json.loads((out / "runs" / enc / "cls.json").read_text())
        assert record["launcher"] == "slurm" and record["state"] == "done" and record["exit_code"] == 0
        assert record["parts"][0]["machine"]["slurm_job_id"] == record["slurm_job_id"]
        assert Path(record["log"]).is_file() and "top-1" in Path(record["log"]).read_text(errors="replace")
        metrics = json.loads((out / "runs" / enc / "cls" / "metrics.json").read_text())
        assert report[enc]["metrics"]["top1"] == metrics["top1"]
        assert "python tools/submit.py --time 10 --cpus-per-task 1 tools/train_cls.py" in report[enc]["command"]


def test_a_bad_suite_from_the_command_line_is_one_line_and_exit_2(run):
    """As a user meets it: a separate process, exit 2, one line, the report folder byte-identical."""
    before = _snapshot(run.out)
    result = subprocess.run([*run.command()[:2], "--suite", "nope", "--output-dir", str(run.out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: unknown suite 'nope': choose one of demo, ") and \
        result.stderr.count("\n") == 1, result.stderr
    assert _snapshot(run.out) == before


def test_local_jobs_run_one_process_per_gpu_of_this_machine_and_slurm_jobs_what_the_suite_asks(tmp_path):
    """The ViT-B paper suite asks Slurm for 8 GPUs a node: a local report runs each job with one process per GPU of
    the machine (--gpus N to choose), so a CPU machine runs plain python, one process."""
    from maetransfer.report.runner import plan
    from maetransfer.report.suite import parse_encoder

    suite = load_suite("paper_vit_base")
    encoders = [parse_encoder("mae=mae_pretrain_vit_base")]
    roots = {spec.data: "/data" for spec in suite.jobs if spec.data}
    cpu = plan(suite.jobs, encoders, roots, tmp_path, "local", local_gpus=0)[0]
    assert cpu.processes == 1 and cpu.command("python")[:2] == ["python", "-u"]
    assert "torch.distributed.run" not in cpu.command("python")
    two = plan(suite.jobs, encoders, roots, tmp_path, "local", local_gpus=2)[0]
    assert "--nproc_per_node=2" in two.command("python")
    slurm = plan(suite.jobs, encoders, roots, tmp_path, "slurm")[0]
    assert slurm.processes == 8 and "--gpus-per-node" in slurm.display_command()


def test_a_suite_is_named_once_by_its_name_or_its_file(tmp_path):
    from maetransfer.report.suite import SUITE_ROOT

    assert load_suite("demo").title == "demo"
    mine = tmp_path / "suite.yaml"
    mine.write_text((SUITE_ROOT / "demo.yaml").read_text())
    assert load_suite(str(mine)).title == "suite.yaml"
