"""Convert a ViT/MAE checkpoint between formats: official MAE, Hugging Face ViTMAE, timm, detectron2-ViTDet, mmseg.

    python tools/convert_checkpoint.py mae_pretrain_vit_base.pth --to hf --output out/vit-mae-base
    python tools/convert_checkpoint.py output/det/mask_rcnn_vit_base/checkpoint.pth --to detectron2 \
        --output vitdet_b.pth

The source format is detected from its keys (any file `maetransfer.checkpoint.read_checkpoint` reads). A whole Mask
R-CNN (this project's train_det.py checkpoint, or a detectron2 ViTDet .pth/.pkl) is written whole by
`--to detectron2` (backbone, pyramid, RPN, box and mask heads: a file detectron2's ViTDet configs load with strict
key matching); the other formats take its encoder.
"""
import argparse
import sys

from maetransfer.cli import OutputPathError, check_new_output

WRITE_FORMATS = ("mae", "hf", "timm", "detectron2", "mmseg")  # = maetransfer.checkpoint.WRITE_FORMATS (test_layout)


def output_format(value: str) -> str:
    if value in ("onnx", "torchscript"):  # deployment formats hold a whole task model, not a checkpoint's weights
        raise argparse.ArgumentTypeError(f"{value} is a deployment format: a trained model is exported (and checked "
                                         f"against PyTorch) by tools/export.py --format {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint file, Hugging Face save_pretrained folder, released name (python -m "
                                    "maetransfer.zoo) or hub id")
    parser.add_argument("--to", required=True, type=output_format, choices=WRITE_FORMATS,
                        help="output format (ONNX and TorchScript: tools/export.py)")
    parser.add_argument("--output", required=True, help="the file to write (a folder for --to hf)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="allow arbitrary pickled objects in SRC (runs code from the file: trusted files only)")
    parser.add_argument("--model", help="expected ViT size (vit_base, vit_large, vit_huge, ...): checked against the "
                                        "weights; gives the head count for --to hf")
    parser.add_argument("--num-heads", type=int, help="encoder attention heads (for --to hf, when not inferable)")
    parser.add_argument("--decoder-num-heads", type=int, help="decoder attention heads (for --to hf)")
    args = parser.parse_args(argv)
    try:  # before the (possibly large) source is read
        check_new_output(args.output, "--output", args.overwrite, folder=args.to == "hf")
    except OutputPathError as exc:
        parser.exit(2, f"error: {exc}\n")
    # imported once the command line is parsed: --help needs no torch
    from maetransfer.checkpoint import (CheckpointError, convert_checkpoint, encoder_arch, is_detector, parse_state,
                                       read_raw, save_detectron2_detector, unwrap_state)
    from maetransfer.models import vit_size
    from maetransfer.zoo import resolve

    try:
        obj, hf_config = read_raw(resolve(args.src, args.unsafe_load), unsafe=args.unsafe_load)
        state, _ = unwrap_state(obj, args.src)
        if is_detector(state) and args.to == "detectron2":
            save_detectron2_detector(state, args.output, args.src)
            print(f"wrote {args.output} (detectron2 ViTDet Mask R-CNN, {len(state)} tensors: backbone, pyramid, RPN, "
                  f"box and mask heads)")
            return
        ckpt = parse_state(obj, args.src, hf_config)
        arch = encoder_arch(ckpt.encoder, args.src)
        num_heads = args.num_heads
        if args.model:
            size = vit_size(args.model)
            if (size["embed_dim"], size["depth"]) != (arch["embed_dim"], arch["depth"]):
                raise CheckpointError(f"{args.src} is a ViT with embed {arch['embed_dim']}/depth {arch['depth']}, "
                                      f"not {args.model} (embed {size['embed_dim']}/depth {size['depth']})")
            num_heads = num_heads or size["num_heads"]
        convert_checkpoint(ckpt, args.output, args.to, num_heads=num_heads, decoder_num_heads=args.decoder_num_heads)
    except (CheckpointError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    kept = {"mae": ("encoder", "decoder", "head"), "timm": ("encoder", "head"), "hf": ("encoder", "decoder"),
            "detectron2": ("encoder", "neck"), "mmseg": ("encoder", "neck")}[args.to]
    parts = {"encoder": ckpt.encoder, "decoder": ckpt.decoder, "head": ckpt.head, "neck": ckpt.neck}
    print(f"read {args.src} as {ckpt.format}: ViT embed {arch['embed_dim']}, depth {arch['depth']}, patch "
          f"{arch['patch_size']}; " + ", ".join(f"{k} {len(v)} tensors" for k, v in parts.items() if v))
    dropped = [f"{k} ({len(v)})" for k, v in parts.items() if v and k not in kept]
    if args.to == "detectron2":
        dropped.append("cls_token and final norm (ViTDet has neither)")
    if ckpt.other:
        dropped.append(f"{len(ckpt.other)} other tensors of the source model")
    print(f"wrote {args.output} ({args.to})" + (f"; not written: {', '.join(dropped)}" if dropped else ""))


if __name__ == "__main__":
    main()
