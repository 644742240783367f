"""Training batches: the training set in memory (on the GPU when it fits, under data_on_device=auto), the
seeded per-epoch order and augmentation generator, and batched augmentation on the training device.

A batch is made in two halves so the training step can be one CUDA graph:
- `draw` (host side): which samples and which crops / flips, as two small integer tensors, idx [B] and
  aug [3, B] (row offset, column offset, flip). On CUDA they reach the device without a host sync: the
  epoch's permutation is copied to the GPU once per epoch, aug through pinned memory, non-blocking.
- `make` (device side, no host sync, capturable): gather, crop, flip, normalise, memory format.

Every rank draws the same global batch and takes the interleaved share [rank::world], so K ranks (or K
accumulation steps) see exactly the samples and crops of one process with the whole batch."""
from typing import Tuple

import torch

from ..data import augment, draw_augment_params, normalize
from ..distributed import DistInfo
from .config_keys import TrainConfig


def epoch_order(n: int, seed: int, epoch: int) -> Tuple[torch.Tensor, torch.Generator]:
    """An epoch's permutation of n training samples and its augmentation generator, both seeded by (seed,
    epoch): every task's batches use it, so a resumed run sees the same order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm, torch.Generator().manual_seed(seed * 7919 + epoch + 1)


class EpochOrderOnDevice:
    """An epoch's permutation on the batches' device, copied once per epoch (one sync at the epoch's start,
    not per step) and kept while the epoch's permutation is the same tensor; every task's batches use it."""

    def __init__(self):
        self.host, self.device_copy = None, None

    def on(self, perm: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return perm
        if self.host is not perm:
            self.host, self.device_copy = perm, perm.to(device)
        return self.device_copy


class BatchSource:
    def __init__(self, data, device: torch.device, dist: DistInfo, cfg: TrainConfig, channels_last: bool):
        self.data, self.device, self.dist, self.channels_last = data, device, dist, channels_last
        self.batch_size = cfg.batch_size
        resident = device.type == "cuda" and cfg.data_on_device in ("auto", True)
        if resident and cfg.data_on_device == "auto":  # datasets that fit live on the GPU
            free, _ = torch.cuda.mem_get_info(device)
            resident = data.train.images.numel() < free // 4
        self.images = data.train.images.to(device) if resident else data.train.images
        self.labels = data.train.labels.to(device)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device)
        self.order = EpochOrderOnDevice()

    @property
    def on_device(self) -> bool:
        """Whether the training set lives on a CUDA device (a CUDA-graphed step needs it there)."""
        return self.images.is_cuda

    def epoch_order(self, seed: int, epoch: int) -> Tuple[torch.Tensor, torch.Generator]:
        return epoch_order(len(self.data.train), seed, epoch)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the training device without a host sync (pinned, non-blocking on CUDA)."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)


    def draw(self, perm: torch.Tensor, step: int, aug_gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch `step` of the epoch: (idx [b], aug [3, b]) on the device holding
        the images. The draws come from the CPU generator, so they are the same on every device."""
        G = self.batch_size
        off, flip = draw_augment_params(G, self.data.crop_padding, self.data.hflip, aug_gen)
        r, w = self.dist.rank, self.dist.world_size
        idx = self.order.on(perm, self.images.device)[step * G:(step + 1) * G][r::w]
        aug = torch.cat([off[:, r::w], flip[r::w].view(1, -1).to(off.dtype)])
        return idx, (self._to_device(aug) if self.images.is_cuda else aug)

    def make(self, idx: torch.Tensor, aug: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x, y) on the training device from `draw`'s output: cropped, flipped, normalised (no host sync when
        the images live on the device)."""
        images = self.images[idx]
        if not images.is_cuda and self.device.type == "cuda":  # training set in host memory: ship the batch
            images, aug = self._to_device(images), self._to_device(aug)
            idx = self._to_device(idx)
        x = augment(images, aug[:2], aug[2].bool(), self.data.crop_padding)
        x = normalize(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]
