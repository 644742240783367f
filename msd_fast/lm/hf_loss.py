"""Hugging Face's causal-LM loss contract for a model with exits, so `transformers.Trainer` (and the loops
written for `*ForCausalLM` models) train an `LMExits` unchanged:

- `labels` [B, T] are unshifted: position t is scored against labels[t + 1]; the last position and tokens
  equal to the loss's ignore_index (HF's -100) score nothing. Already shifted `shift_labels` are taken as they
  are (HF's padding-free collators pass them).
- The loss is the fused linear MSD loss over the exits (the N x B x T x V logits never exist), the mean over
  the kept tokens; with `num_items_in_batch` (the Trainer passes the kept tokens of all of an optimizer step's
  micro-batches, summed over ranks), it is the summed loss divided by that count instead, so gradient
  accumulation and padding weigh every token equally, as HF's own causal-LM loss does.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class LMExitLossOutput(dict):
    """A forward's result given labels: {"loss": scalar, "exit_ce": [N], "exit_kd": [N]} (the per-exit
    means, detached); keys read as attributes too (out.loss), as a transformers ModelOutput's do."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def exit_loss_inputs(out):
    """(hidden, weight, bias) of an LMExitOutput for the fused linear loss, the head in the hidden states' dtype
    (under autocast the hidden states are half and the parameters float32)."""
    dt = out.hidden[0].dtype

    def cast(x):
        return x if x is None else (x.to(dt) if isinstance(x, Tensor) else [t.to(dt) for t in x])

    return out.hidden, cast(out.weight), cast(out.bias)


def check_labels(labels, shape, name: str) -> Tensor:
    """labels of input_ids' shape as int64 token ids (ignore_index entries ignored)."""
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"{name}: expected an integer tensor of token ids (-100 ignored), got {got}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name}: expected the shape of input_ids {tuple(shape)}, got {tuple(labels.shape)}")
    return labels.long()


def causal_lm_exit_loss(loss_fn, out, labels: Optional[Tensor], shift_labels: Optional[Tensor],
                        num_items_in_batch=None) -> LMExitLossOutput:
    """The loss of `loss_fn` (a FusedLinearMSDLoss) on an LMExitOutput, by the contract above; no host sync."""
    ig = loss_fn.ignore_index
    if ig is None:
        raise ValueError("loss: a FusedLinearMSDLoss with ignore_index=None cannot score labels (the last position "
                         "has no target); use ignore_index=-100, Hugging Face's")
    shape = out.hidden[0].shape[:-1]
    if shift_labels is not None:
        if labels is not None:
            raise ValueError("labels, shift_labels: pass one of them (shift_labels are labels already shifted)")
        target = check_labels(shift_labels, shape, "shift_labels")
    else:  # position t is scored against labels[t + 1]; the last position against nothing
        target = F.pad(check_labels(labels, shape, "labels"), (0, 1), value=ig)[..., 1:]
    hidden, weight, bias = exit_loss_inputs(out)
    loss, terms = loss_fn(hidden, weight, target, bias, return_terms=True)
    if num_items_in_batch is not None:
        kept = (target != ig).sum()
        loss = loss * (kept.to(loss.dtype) / torch.as_tensor(num_items_in_batch, dtype=loss.dtype,
                                                             device=loss.device))
    return LMExitLossOutput(loss=loss, exit_ce=terms.ce, exit_kd=terms.kd)
