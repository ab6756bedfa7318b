"""MAE pretraining run: config -> data -> model -> shared engine -> checkpoint, encoder file, reconstructions."""
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig
from torchvision import transforms

from maetransfer.checkpoint import load_into, read_checkpoint
from maetransfer.data.images import IMAGENET_MEAN, IMAGENET_STD, UnlabeledImages
from maetransfer.engine import Trainer, atomic_save, setup_process
from maetransfer.optim import param_groups

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


def run(cfg: DictConfig, output_dir=None, init_checkpoint: Optional[str] = None) -> Path:
    """Pretrain as `cfg` says; returns the path of the exported encoder ({'model': encoder} official layout).
    init_checkpoint: the file that train.init_checkpoint names, as the tool resolved it (released names, hub ids
    and the demo encoder become files; the config keeps the name); by default train.init_checkpoint itself."""
    output_dir = Path(output_dir or cfg.train.output_dir)
    dataset = UnlabeledImages(cfg.data.root, train_transform(cfg), skip_corrupt=cfg.data.skip_corrupt)
    setup_process(cfg.train)  # threads; the same seed gives the same initial weights
    model = build_model(cfg.model)
    init = init_checkpoint or cfg.train.init_checkpoint  # the file the tool resolved a released name into
    if init:  # a resumed run's own checkpoint replaces these weights in trainer.fit()
        load_init(model, init, bool(cfg.train.unsafe_load))
    groups = param_groups(model, cfg.train.weight_decay, no_weight_decay=model.no_weight_decay())
    mask_ratio = float(cfg.model.mask_ratio)
    preview = UnlabeledImages(cfg.data.root, eval_transform(cfg.model.img_size))
    preview_imgs = [preview[i] for i in preview_indices(preview.files, int(cfg.data.num_preview))]

    def loss_fn(model, imgs, device):
        loss, _, _ = model(imgs.to(device, non_blocking=True), mask_ratio)
        return loss, {}

    def on_checkpoint(model: MaskedAutoencoderViT, out: Path):
        atomic_save({"model": model.encoder_state_dict()}, out / ENCODER_FILE)
        if preview_imgs:  # one figure per checkpoint, named by the unit the run counts in
            name = f"iter{trainer.iter:07d}" if trainer.by_iters else f"epoch{trainer.epoch:04d}"
            save_reconstructions(model, torch.stack(preview_imgs).to(next(model.parameters()).device),
                                 out / "reconstructions" / f"{name}.png", mask_ratio)

    trainer = Trainer(cfg, model, groups, dataset, loss_fn, output_dir, on_checkpoint=on_checkpoint, stage="pretrain",
                      data_name=str(cfg.data.root))
    trainer.fit()
    return output_dir / ENCODER_FILE
