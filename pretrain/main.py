"""MAE pretraining run: config -> data -> model -> shared engine -> checkpoint, encoder file, reconstructions."""
from pathlib import Path
from typing import Dict, List, Optional

import torch
from omegaconf import DictConfig
from torchvision import transforms

from maetransfer.checkpoint import load_into, read_checkpoint
from maetransfer.config import load_config
from maetransfer.data.demo import write_demo_images
from maetransfer.data.images import IMAGENET_MEAN, IMAGENET_STD, UnlabeledImages
from maetransfer.engine import Hook, Task, Trainer, dist, run_task
from maetransfer.files import save_torch
from maetransfer.optim import no_decay_on, param_groups
from maetransfer.tasks import TASKS

from .models_mae import MaskedAutoencoderViT, build_mae
from .visualize import preview_indices, save_reconstructions

ENCODER_FILE = "mae_pretrain_encoder.pth"


def build_model(model_cfg: DictConfig) -> MaskedAutoencoderViT:
    overrides = {k: model_cfg[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")
                 if model_cfg[k] is not None}
    return build_mae(model_cfg.arch, img_size=model_cfg.img_size, decoder_embed_dim=model_cfg.decoder_embed_dim,
                     decoder_depth=model_cfg.decoder_depth, decoder_num_heads=model_cfg.decoder_num_heads,
                     norm_pix_loss=model_cfg.norm_pix_loss, mask_sampler=model_cfg.mask_sampler,
                     mask_tokens_in_encoder=model_cfg.mask_tokens_in_encoder,
                     drop_path_rate=model_cfg.drop_path_rate, grad_checkpointing=model_cfg.grad_checkpointing,
                     **overrides)


def load_init(model: MaskedAutoencoderViT, path: str, unsafe: bool = False) -> None:
    """Continue pretraining from a checkpoint: its encoder (any format the reader knows; pos_embed and patch kernel
    adapted) and its decoder when it has one (released `_full` / `mae_visualize_*`, HF ViTMAEForPreTraining, our
    pretraining checkpoints); an encoder-only file leaves the decoder at its random init. A decoder of another width
    or depth is an error."""
    ckpt = read_checkpoint(path, unsafe)
    # decoder_pos_embed is the fixed sin-cos table of this model's grid: recomputed, never loaded
    decoder = {k: v for k, v in ckpt.decoder.items() if k != "decoder_pos_embed"}
    load_into(model, {**ckpt.encoder, **decoder}, source=path)


def train_transform(cfg: DictConfig):
    """RandomResizedCrop(scale 0.2-1, bicubic) + flip, the paper's only pretraining augmentation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(cfg.model.img_size, scale=(cfg.data.min_scale, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(img_size: int):
    return transforms.Compose([
        transforms.Resize(img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ExportEncoder(Hook):
    """After each checkpoint: the encoder alone in the official layout, and a figure of reconstructions of the preview
    images named by the unit the run counts in (iterations or epochs)."""

    def __init__(self, preview_images: List[torch.Tensor], mask_ratio: float):
        self.preview_images, self.mask_ratio = preview_images, mask_ratio

    def after_checkpoint(self, trainer: Trainer) -> None:
        if not dist.is_main_process():
            return
        model: MaskedAutoencoderViT = trainer.model_without_ddp
        save_torch({"model": model.encoder_state_dict()}, trainer.output_dir / ENCODER_FILE)
        if self.preview_images:
            name = f"iter{trainer.iter:07d}" if trainer.by_iters else f"epoch{trainer.epoch:04d}"
            save_reconstructions(model, torch.stack(self.preview_images).to(next(model.parameters()).device),
                                 trainer.output_dir / "reconstructions" / f"{name}.png", self.mask_ratio)


class PretrainingTask(Task):
    """MAE pretraining on a folder of images; results: the exported encoder file ({'model': encoder}, official
    layout). No evaluation: each checkpoint exports the encoder and a figure of reconstructions."""

    name = stage = "pretrain"

    def prepare_data(self) -> None:
        # The demo's generated scenes (first run only), and only into the demo's own folder: a data.root of the
        # user's that is missing is an error of the run, not a place to write 2000 scenes into.
        demo_root = load_config(TASKS["pretrain"].demo_config).data.root
        if Path(self.cfg.data.root).resolve() == Path(demo_root).resolve():
            write_demo_images(self.cfg.data.root, size=self.cfg.model.img_size)

    def build(self, eval_only: bool) -> MaskedAutoencoderViT:
        cfg = self.cfg
        self.train_set = UnlabeledImages(cfg.data.root, train_transform(cfg), skip_corrupt=cfg.data.skip_corrupt)
        preview = UnlabeledImages(cfg.data.root, eval_transform(cfg.model.img_size))
        self.preview_images = [preview[i] for i in preview_indices(preview.files, int(cfg.data.num_preview))]
        self.results = Path(cfg.train.output_dir) / ENCODER_FILE
        return build_model(cfg.model)

    def load_pretrained(self, model: MaskedAutoencoderViT, path: str, unsafe: bool) -> None:
        load_init(model, path, unsafe)  # a resumed run's own checkpoint replaces these weights

    def param_groups(self, model: MaskedAutoencoderViT) -> List[Dict]:
        return param_groups(model, self.cfg.train.weight_decay, no_decay=no_decay_on(model.no_weight_decay()))

    def loss_fn(self):
        mask_ratio = float(self.cfg.model.mask_ratio)

        def loss_fn(model, imgs, device):
            loss, _, _ = model(imgs.to(device, non_blocking=True), mask_ratio)
            return loss, {}

        return loss_fn

    def hooks(self) -> List[Hook]:
        return [ExportEncoder(self.preview_images, float(self.cfg.model.mask_ratio))]

    def trainer_options(self) -> Dict:
        return {"data_name": str(self.cfg.data.root)}


def run(cfg: DictConfig, init_checkpoint: Optional[str] = None) -> Path:
    """Pretrain as `cfg` says (`engine.run_task`); returns the path of the exported encoder.
    init_checkpoint: the file that train.init_checkpoint names, as the tool resolved it; by default
    train.init_checkpoint itself."""
    return run_task(PretrainingTask(cfg), init_checkpoint=init_checkpoint)
