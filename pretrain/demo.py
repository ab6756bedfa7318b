"""The embedded demo: generated scenes -> a small MAE -> an encoder that every transfer demo starts from.

The demo encoder counts as pretrained only once its whole pretraining has run: pretraining exports its encoder at every
checkpoint, so the transfer demos read `demo_encoder.pth`, written (atomically) only after the last iteration. An
interrupted demo pretraining resumes where it stopped, and demos started together wait for one pretraining."""
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from maetransfer.cli import TOOL_DEFAULTS
from maetransfer.config import load_config
from maetransfer.data.demo import write_demo_images
from maetransfer.engine import dist
from maetransfer.files import atomic_write
from maetransfer.zoo import resolve

from .main import run

DEMO_CONFIG = TOOL_DEFAULTS["pretrain_mae"][0]
DEMO_INIT = "demo"  # train.init_checkpoint value meaning "the demo-pretrained encoder" (pretrained on first use)
DEMO_ENCODER_FILE = "demo_encoder.pth"


def demo_encoder_path(root="output/demo") -> Path:
    return Path(root) / "pretrain" / DEMO_ENCODER_FILE


def ensure_demo_encoder(root="output/demo", overrides=()) -> Path:
    """Path of the demo-pretrained encoder under `root`, pretraining it first (minutes on CPU) unless a complete
    pretraining wrote it: an interrupted one is resumed, and a concurrent caller waits for the one under way."""
    root = Path(root)
    encoder = demo_encoder_path(root)
    if encoder.is_file():
        return encoder
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / "pretrain.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for the demo encoder that another process is pretraining ({lock.lock_file})")
        lock.acquire()
    try:
        if encoder.is_file():  # pretrained by the process this one waited for
            return encoder
        cfg = load_config(DEMO_CONFIG,
                          [f"data.root={root / 'data' / 'pretrain'}", f"train.output_dir={root / 'pretrain'}",
                           "train.resume=auto", *overrides])
        print(f"no demo encoder at {encoder} yet: pretraining it first on generated scenes (once; later runs reuse it)")
        write_demo_images(cfg.data.root, size=cfg.model.img_size)
        last_export = run(cfg)
        atomic_write(encoder, lambda tmp: shutil.copyfile(last_export, tmp))  # the mark of a complete pretraining
        return encoder
    finally:
        lock.release()


def pretrains_demo_encoder(init_checkpoint: str) -> bool:
    """Whether a transfer run with this `train.init_checkpoint` starts by pretraining the demo encoder."""
    return init_checkpoint == DEMO_INIT and not demo_encoder_path().is_file()


def resolve_init_checkpoint(spec: str, unsafe: bool = False) -> str:
    """`train.init_checkpoint` as a file, before the process group is joined: 'demo' becomes the demo encoder,
    pretrained by one process alone (the others wait for its lock); a path, released name or hub id resolves as
    everywhere (`maetransfer.zoo.resolve`)."""
    if spec != DEMO_INIT:
        return str(resolve(spec, unsafe))
    with dist.alone():  # a one-process pretraining, whatever the job's size
        return str(ensure_demo_encoder())
