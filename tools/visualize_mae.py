#!/usr/bin/env python
"""Reconstruct images with an MAE checkpoint that has a decoder and save the figure as PNG.

  python tools/visualize_mae.py mae_visualize_vit_large photo.jpg --output recon.png
  python tools/visualize_mae.py output/demo/pretrain/checkpoint.pth a.jpg b.jpg --mask-ratio 0.75

Rows: original | masked | reconstruction | reconstruction with the visible patches pasted back.
Released `_full` files predict per-patch normalised pixels: pass --norm-pix to show them as pixels.
"""
import argparse

from maetransfer.cli import OutputPathError, check_new_output, number_in


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="file, HF folder, released name (python -m maetransfer.zoo) or hub id")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--output", default="mae_reconstruction.png", help="the PNG to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--mask-ratio", type=number_in(float, 0, 1, open_high=True), default=0.75,
                        help="share of the patches masked, in [0, 1) (default 0.75)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    parser.add_argument("--norm-pix", action="store_true", help="the model predicts normalised patches")
    parser.add_argument("--num-heads", type=int, help="encoder heads, for sizes the file does not reveal")
    parser.add_argument("--decoder-num-heads", type=int, help="decoder heads, likewise")
    parser.add_argument("--unsafe-load", action="store_true", help="allow full unpickling of the checkpoint")
    args = parser.parse_args(argv)
    try:
        check_new_output(args.output, "--output", args.overwrite)  # before the model is read
    except OutputPathError as exc:
        parser.exit(2, f"error: {exc}\n")
    # imported once the command line is parsed: --help needs no torch
    import torch

    from maetransfer.checkpoint import CheckpointError
    from maetransfer.data.images import ImageReadError, read_rgb
    from maetransfer.zoo import resolve
    from pretrain.main import eval_transform
    from pretrain.models_mae import mae_from_checkpoint
    from pretrain.visualize import save_reconstructions

    try:
        model = mae_from_checkpoint(resolve(args.checkpoint, args.unsafe_load), args.unsafe_load, args.num_heads,
                                    args.decoder_num_heads)
        model.norm_pix_loss = model.norm_pix_loss or args.norm_pix
        size = model.grid_size[0] * model.patch_size
        imgs = torch.stack([eval_transform(size)(read_rgb(p)) for p in args.images])
    except (CheckpointError, ImageReadError) as exc:  # bad input, as in every tool: one line, exit 1
        parser.exit(1, f"error: {exc}\n")
    path = save_reconstructions(model, imgs, args.output, args.mask_ratio, seed=args.seed)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
