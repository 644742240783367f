"""Data: readers for Fashion-MNIST / CIFAR / synthetic, held-out validation, batched augmentation."""
from .augment import augment, draw_augment_params, normalize
from .datasets import DATASET_TABLE, DATASETS, Dataset, DatasetInfo, Split, load_dataset
from .idx import DataError, read_idx

__all__ = ["load_dataset", "Dataset", "Split", "DATASETS", "DATASET_TABLE", "DatasetInfo", "DataError", "read_idx", "augment",
           "draw_augment_params", "normalize"]
