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


def ensure_demo_encoder(root="output/demo", overrides=()) -> Path:
    """Path of the demo-pretrained encoder under `root`, pretraining it first (minutes on CPU) if it is missing."""
    root = Path(root)
    encoder = root / "pretrain" / ENCODER_FILE
    if encoder.is_file():
        return encoder
    cfg = load_config(DEMO_CONFIG, [f"data.root={root / 'data' / 'pretrain'}",
                                    f"train.output_dir={root / 'pretrain'}", *overrides])
    write_demo_images(cfg.data.root, size=cfg.model.img_size)
    print(f"pretraining the demo MAE encoder into {encoder} (first run only)")
    return run(cfg)


def resolve_init_checkpoint(path: str) -> str:
    """`train.init_checkpoint` as a file path: 'demo' is the demo encoder, pretrained once by the main process while
    the other processes wait."""
    if path != DEMO_INIT:
        return path
    if dist.is_main_process():
        ensure_demo_encoder()
    dist.barrier()
    return str(ensure_demo_encoder())
