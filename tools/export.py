#!/usr/bin/env python
"""Export a trained model to ONNX (run by ONNX Runtime) or TorchScript, checked against PyTorch before it is written.
The task comes from the config; the checkpoint is anything that task's --eval-only takes (this project's
checkpoint.pth, a detectron2 ViTDet .pth/.pkl, an mmseg UperNet, an official fine-tuned classifier, a released name).

  python tools/export.py --config configs/det/mask_rcnn_vit_base_coco.yaml --checkpoint mask_rcnn_vitdet_b_100ep \\
      --output-dir exported/vitdet_b
  python tools/export.py --config configs/cls/demo.yaml --checkpoint output/demo/cls/checkpoint.pth \\
      --output-dir exported/cls_demo --format torchscript

Writes into --output-dir model.onnx (model.pt), export.json (what a runtime needs: task, input size, normalisation,
class names, thresholds, the config; and the check's figures) and config.yaml. The exported file then runs through
the same doors as a checkpoint:

  python tools/predict.py --config CFG --checkpoint exported/vitdet_b/model.onnx photos/ --output-dir predictions/
  python tools/train_det.py --config CFG --eval-only --checkpoint exported/vitdet_b/model.onnx
"""
import argparse

# Parsed before torch is imported, so that --help and usage errors answer at once.
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", required=True, help="the model's recipe, e.g. configs/det/demo.yaml or a run's "
                                                    "config.yaml")
parser.add_argument("--checkpoint", required=True, help="trained model: a file or a released name "
                                                        "(python -m maetransfer.zoo)")
parser.add_argument("--output-dir", required=True, help="folder for the exported model and its metadata")
parser.add_argument("--format", default="onnx", choices=("onnx", "torchscript"), help="default: onnx")
parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; the detector needs >= 16)")
parser.add_argument("--image", action="append", default=[], metavar="PATH",
                    help="an image to check the export on (repeatable; default: a generated demo scene)")
parser.add_argument("--class-names", help="text file of one class name per line, replacing the checkpoint's")
parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output-dir")
parser.add_argument("--unsafe-load", action="store_true",
                    help="fully unpickle checkpoints that weights_only loading refuses (only files you trust)")
parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. model.img_size=448")


def main(argv=None) -> dict:
    args = parser.parse_intermixed_args(argv)
    from maetransfer.export.tool import run

    return run(parser, args)


if __name__ == "__main__":
    main()
