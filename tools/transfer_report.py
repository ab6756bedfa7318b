#!/usr/bin/env python
"""One command from encoders to their transfer report: every job of a suite (configs/report/<suite>.yaml) for every
encoder, run as the tools' own command lines, then DIR/report.md, a self-contained DIR/report.html and
DIR/report.json comparing the encoders with each other and with the paper.

  python tools/transfer_report.py                        # demo suite, encoders mae=demo and random= (CPU, ~30 min)
  python tools/transfer_report.py --suite paper_vit_base --encoder mae=mae_pretrain_vit_base \\
      --encoder mine=output/pretrain/mae_vit_base/mae_pretrain_encoder.pth \\
      data.imagenet=/data/imagenet data.coco=/data/coco data.ade20k=/data/ADEChallengeData2016 \\
      --launcher slurm --slurm partition=gpu
  python tools/transfer_report.py --suite paper_vit_base --status

--encoder [LABEL=]SPEC: anything train.init_checkpoint takes (a file, a released name, a Hugging Face id, demo, or
nothing for random initialisation). Rows whose data root is not given are listed as skipped. Run the same command
again to continue: finished jobs are read, stopped ones resume from their checkpoints, failed ones run again.
"""
import argparse
import shlex
import sys

from maetransfer.cli import number_in


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="demo", help="a name in configs/report (default: demo) or a suite's YAML file")
    p.add_argument("--encoder", action="append", default=[], metavar="[LABEL=]SPEC",
                   help="an encoder to compare (repeatable; default: the suite's encoders)")
    p.add_argument("--output-dir", help="the report folder (default: output/report/<suite>)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: one job after another here; slurm: every job submitted at once (submitit)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a Slurm setting for every job over the suite's, e.g. partition=gpu (repeatable)")
    p.add_argument("--gpus", type=number_in(int, 0), help="local: processes per job, one per GPU (default: every GPU "
                                                         "of this machine; one process without a GPU)")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and write the report without waiting")
    p.add_argument("--poll", type=float, default=60.0, help="slurm: seconds between looks at the queue (default 60)")
    p.add_argument("--status", action="store_true", help="print where each job is and exit; runs nothing")
    p.add_argument("data", nargs="*", metavar="data.KEY=PATH", help="data roots of the suite's rows")
    return p


def main(argv=None) -> None:
    p = parser()
    args = p.parse_intermixed_args(argv)  # before torch is imported: --help and usage errors answer at once
    from maetransfer.report.tool import main as run

    run(p, args, shlex.join(["python", "tools/transfer_report.py", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()
