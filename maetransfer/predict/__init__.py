"""Predictions on one's own images with a trained model, through the evaluation's own test pipeline (tools/predict.py
is the command line):

    from maetransfer.predict import Predictor
    predictor = Predictor.from_config("configs/det/mask_rcnn_vit_base_coco.yaml", "mask_rcnn_vitdet_b_100ep")
    prediction = predictor("photo.jpg")          # boxes, scores, labels, masks
    predictor.draw("photo.jpg", prediction).save("photo_detections.png")

The config says the task: detection gives `boxes` / `scores` / `labels` / `masks`, segmentation a `label_map`,
classification the top-k `labels` and `scores`; `predictor.class_names` names the labels.
"""
from .base import ClassNamesError, Predictor, read_class_names, task_of, to_image
from .cls import ClassificationPredictor
from .det import DetectionPredictor
from .seg import SegmentationPredictor

__all__ = ["ClassNamesError", "ClassificationPredictor", "DetectionPredictor", "Predictor", "SegmentationPredictor",
           "read_class_names", "task_of", "to_image"]
