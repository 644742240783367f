"""Per-exit predictions and accuracies of a multi-exit model on a data split (no augmentation)."""
from typing import Dict, List

import torch
from torch import Tensor

from ..data import Split, normalize
from ..distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def predict_probs(model, split: Split, mean, std, batch_size: int = 1000, device="cpu",
                  channels_last: bool = False, amp_dtype=None) -> Tensor:
    """Softmax probabilities of every exit: [N_exits, len(split), C] float32 on the CPU."""
    model.eval()
    outs = []
    for i in range(0, len(split), batch_size):
        x = normalize(split.images[i:i + batch_size].to(device, non_blocking=True), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype or torch.bfloat16,
                            enabled=amp_dtype is not None):
            logits = model(x).logits
        outs.append(torch.stack([z.float().softmax(-1) for z in logits]).cpu())
    return torch.cat(outs, 1)


@torch.no_grad()
def evaluate_split(model, split: Split, mean, std, batch_size: int, device, channels_last: bool,
                   amp_dtype, dist_info: DistInfo = DistInfo()) -> Dict[str, List[float]]:
    """Accuracies on a split; under DDP each rank scores an interleaved shard and counts are summed."""
    shard = Split(split.images[dist_info.rank::dist_info.world_size], split.labels[dist_info.rank::dist_info.world_size])
    probs = predict_probs(model, shard, mean, std, batch_size, device, channels_last, amp_dtype)
    labels = shard.labels
    running = probs.cumsum(0)
    counts = torch.stack([(probs.argmax(-1) == labels).sum(1), (running.argmax(-1) == labels).sum(1)]).double()
    counts = all_reduce_sum(counts.to(device), dist_info).cpu()
    n = len(split)
    return {"exits": (counts[0] * 100.0 / n).tolist(), "ensemble": (counts[1] * 100.0 / n).tolist()}
