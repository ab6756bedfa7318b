"""Classification transfer: classifiers for fine-tuning / linear probing / partial fine-tuning, and evaluation."""
from .evaluate import AccuracyCounter, ClassificationEvaluator, write_results
from .model import MODES, build_classifier, set_trainable, trainable_prefixes
