"""Evaluation of retrained and official checkpoints (``python evaluate.py``)."""
from fairdarts.evaluation.evaluator import EvalResult, LoadedModel, evaluate, load_model

__all__ = ["EvalResult", "LoadedModel", "evaluate", "load_model"]
