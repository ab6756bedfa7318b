"""maetransfer: MAE-pretrained ViTs transferred to detection, segmentation and classification."""
__version__ = "0.1.0"
