"""Training batches: the training set in memory (on the GPU when it fits, under data_on_device=auto), the
seeded per-epoch order and augmentation generator, and batched augmentation on the training device.

Every rank draws the same global batch and takes the interleaved share [rank::world], so K ranks (or K
accumulation steps) see exactly the samples and crops of one process with the whole batch."""
from typing import Any, Dict, Tuple

import torch

from ..data import augment, draw_augment_params, normalize
from ..distributed import DistInfo


class BatchSource:
    def __init__(self, data, device: torch.device, dist: DistInfo, cfg: Dict[str, Any], channels_last: bool):
        self.data, self.device, self.dist, self.channels_last = data, device, dist, channels_last
        self.batch_size = cfg["batch_size"]
        resident = device.type == "cuda" and cfg["data_on_device"] in ("auto", True)
        if resident and cfg["data_on_device"] == "auto":  # datasets that fit live on the GPU
            free, _ = torch.cuda.mem_get_info(device)
            resident = data.train.images.numel() < free // 4
        self.images = data.train.images.to(device) if resident else data.train.images
        self.labels = data.train.labels.to(device) if resident else data.train.labels

    def epoch_order(self, seed: int, epoch: int) -> Tuple[torch.Tensor, torch.Generator]:
        """The epoch's permutation of the training set and its augmentation generator (seeded by epoch)."""
        perm = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return perm, torch.Generator().manual_seed(seed * 7919 + epoch + 1)

    def batch(self, perm: torch.Tensor, step: int, aug_gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch `step` of the epoch, augmented and normalised on the device."""
        G = self.batch_size
        off, flip = draw_augment_params(G, self.data.crop_padding, self.data.hflip, aug_gen)
        r, w = self.dist.rank, self.dist.world_size
        idx = perm[step * G:(step + 1) * G][r::w].to(self.images.device)
        x = augment(self.images[idx], off[:, r::w], flip[r::w], self.data.crop_padding)
        x = normalize(x, self.data.mean, self.data.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx].to(self.device, non_blocking=True)
