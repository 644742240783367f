"""Data: the dataset table and readers (Fashion-MNIST / CIFAR / synthetic), your own data (custom.py),
held-out validation, batched augmentation."""
from .augment import augment, draw_augment_params, normalize
from .custom import from_splits, from_tensors, from_torch
from .datasets import DATASET_TABLE, DATASETS, Dataset, DatasetInfo, Split, load_dataset
from .idx import DataError, read_idx

__all__ = ["from_tensors", "from_torch", "from_splits", "load_dataset", "Dataset", "Split", "DATASETS", "DATASET_TABLE", "DatasetInfo", "DataError", "read_idx", "augment",
           "draw_augment_params", "normalize"]
