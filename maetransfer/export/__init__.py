"""Deployment: a trained model of any task as an ONNX (ONNX Runtime) or TorchScript file, checked against PyTorch
when it is written, and run again through the project's own doors (tools/predict.py, --eval-only).

  graphs    what each task's graph holds and what stays outside it
  exporter  `export(cfg, checkpoint, output)`: trace, write, check, publish (tools/export.py)
  check     the comparison with PyTorch and its tolerances
  runtime   `open_exported(path, task)`: an exported file as the task's model
"""
from .runtime import ExportError, is_exported, open_exported

__all__ = ["ExportError", "is_exported", "open_exported"]
