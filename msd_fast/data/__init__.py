"""Data: readers for Fashion-MNIST / CIFAR / synthetic, held-out validation, batched augmentation."""
from .augment import augment, draw_augment_params, normalize
from .datasets import DATASETS, Dataset, Split, load_dataset
from .idx import DataError, read_idx

__all__ = ["load_dataset", "Dataset", "Split", "DATASETS", "DataError", "read_idx", "augment",
           "draw_augment_params", "normalize"]
