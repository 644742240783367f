"""Batched augmentation and normalisation on whatever device the batch lives on (no per-sample Python):
random crop with zero padding and horizontal flip, the standard CIFAR / Fashion-MNIST recipe."""
import torch
import torch.nn.functional as F
from torch import Tensor


def draw_augment_params(n: int, padding: int, hflip: bool, generator: torch.Generator):
    """Random offsets in [0, 2 * padding] and flip flags for n images, drawn on the CPU generator so the
    draws are identical on every rank and on every device (exact resume, DDP == single process)."""
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return off, flip


def augment(images: Tensor, off: Tensor, flip: Tensor, padding: int) -> Tensor:
    """images [B, C, H, W] (any dtype) -> randomly cropped (padded by `padding`) and flipped copies."""
    B, C, H, W = images.shape
    dev = images.device
    off, flip = off.to(dev, non_blocking=True), flip.to(dev, non_blocking=True)
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        rows = off[0].view(B, 1) + torch.arange(H, device=dev).view(1, H)            # [B, H]
        cols = off[1].view(B, 1) + torch.arange(W, device=dev).view(1, W)            # [B, W]
        cols = torch.where(flip.view(B, 1), cols.flip(1), cols)
        b_idx = torch.arange(B, device=dev).view(B, 1, 1, 1)
        c_idx = torch.arange(C, device=dev).view(1, C, 1, 1)
        return padded[b_idx, c_idx, rows.view(B, 1, H, 1), cols.view(B, 1, 1, W)]
    return torch.where(flip.view(B, 1, 1, 1), images.flip(3), images)


def normalize(images: Tensor, mean, std, dtype=torch.float32) -> Tensor:
    """uint8 images (0..255) or float images (0..1) -> (x - mean) / std in `dtype`. mean / std: per-channel
    sequences, or tensors already on the images' device (no host-to-device copy, so no sync: the training
    step passes those)."""
    x = images.to(dtype).div_(255.0) if images.dtype == torch.uint8 else images.to(dtype)
    m = torch.as_tensor(mean, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    return (x - m) / s
