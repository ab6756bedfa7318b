"""The embedded demo: generated scenes -> a small MAE -> an encoder that every transfer demo starts from."""
from pathlib import Path

from PIL import Image

from maetransfer.config import load_config
from maetransfer.data.demo import render_scenes
from maetransfer.engine import dist

from .main import ENCODER_FILE, run

DEMO_CONFIG = "configs/pretrain/demo.yaml"
DEMO_INIT = "demo"  # train.init_checkpoint value meaning "the demo-pretrained encoder" (pretrained on first use)


def write_demo_images(folder, count: int = 2000, size: int = 64, seed: int = 0) -> Path:
    """A flat folder of generated JPEG scenes (written once; reused when complete)."""
    folder = Path(folder)
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) >= count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, _) in enumerate(render_scenes(count, size=size, seed=seed)):
        Image.fromarray(image).save(folder / f"scene_{i:05d}.jpg", quality=95)
    return folder


def demo_encoder_path(root="output/demo") -> Path:
    return Path(root) / "pretrain" / ENCODER_FILE


def ensure_demo_encoder(root="output/demo", overrides=()) -> Path:
    """Path of the demo-pretrained encoder under `root`, pretraining it first (minutes on CPU) if it is missing."""
    root = Path(root)
    encoder = demo_encoder_path(root)
    if encoder.is_file():
        return encoder
    cfg = load_config(DEMO_CONFIG, [f"data.root={root / 'data' / 'pretrain'}",
                                    f"train.output_dir={root / 'pretrain'}", *overrides])
    print(f"no demo encoder at {encoder} yet: pretraining it first on generated scenes (once; later runs reuse it)")
    write_demo_images(cfg.data.root, size=cfg.model.img_size)
    return run(cfg)


def pretrains_demo_encoder(init_checkpoint: str) -> bool:
    """Whether a transfer run with this `train.init_checkpoint` starts by pretraining the demo encoder."""
    return init_checkpoint == DEMO_INIT and not demo_encoder_path().is_file()


def resolve_init_checkpoint(path: str) -> str:
    """`train.init_checkpoint` for the checkpoint reader: 'demo' becomes the demo encoder's path, pretrained once by
    the main process while the other processes wait; anything else (a path, a released name) passes unchanged."""
    if path != DEMO_INIT:
        return path
    if dist.is_main_process():
        ensure_demo_encoder()
    dist.barrier()
    return str(ensure_demo_encoder())
