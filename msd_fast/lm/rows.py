"""How a corpus split becomes model rows of seq_len tokens, for training (task.py) and evaluation (evaluate.py).

- packed (the default): consecutive, non-overlapping windows of seq_len + 1 tokens (corpus.windows); a window
  may span examples.
- padded (lm_batching padded; a corpus of your own data, text_data.py): one example per row, its first
  seq_len + 1 tokens, right-padded with the end-of-text token. Pads are never targets (-100), and since they
  come after every real token, causal attention never lets a real token see one: the real tokens' outputs
  equal those of the example alone (the same as Hugging Face's right padding with an attention mask).

Either way the targets are the next tokens, -100 where the loss mask (pairs: the prompt) says no."""
from typing import Optional

import torch

from .corpus import masked_targets, windows
from .names import LM_BATCHINGS


class SplitRows:
    """Rows of one split on `device`: n rows; rows(idx [b]) -> (inputs [b, T], targets [b, T]), no host sync."""

    def __init__(self, tokens, seq_len: int, device, mask=None, starts=None, pad_id: int = 0, limit: int = 0):
        self.T, self.padded = seq_len, starts is not None
        self.offsets = torch.arange(seq_len + 1, device=device)
        if self.padded:
            st = torch.from_numpy(starts.astype("int64"))
            if limit:
                st = st[:limit + 1]
            self.n = len(st) - 1
            self.starts = st.to(device)
            self.tokens = torch.from_numpy(tokens[:int(st[-1])].astype("int64")).to(device)
            self.pad = pad_id
        else:
            toks, self.n = windows(tokens, seq_len, limit)
            self.tokens = toks.to(device)
        self.mask = None
        if mask is not None:
            m = mask[:len(self.tokens)]
            self.mask = torch.from_numpy(m.astype("uint8")).to(device)

    def rows(self, idx: torch.Tensor):
        if not self.padded:
            at = idx[:, None] * self.T + self.offsets
            seq = self.tokens[at]
            return seq[:, :-1], masked_targets(seq[:, 1:], None if self.mask is None else self.mask[at][:, 1:])
        s = self.starts[idx]
        inside = self.offsets[None] < (self.starts[idx + 1] - s)[:, None]  # past the example: padding
        at = torch.minimum(s[:, None] + self.offsets, self.starts[idx + 1][:, None] - 1)
        seq = torch.where(inside, self.tokens[at], self.pad)
        keep = inside if self.mask is None else inside & (self.mask[at] != 0)
        return seq[:, :-1], masked_targets(seq[:, 1:], keep[:, 1:])


def split_rows(corpus, split: str, seq_len: int, batching: str, device, limit: int = 0) -> SplitRows:
    """The rows of a corpus's split; padded needs the corpus's example starts (text_data.py writes them)."""
    if batching not in LM_BATCHINGS:
        raise ValueError(f"lm_batching must be one of {', '.join(LM_BATCHINGS)}, got {batching!r}")
    starts: Optional[object] = None
    if batching == "padded":
        if corpus.starts is None:
            raise ValueError(f"lm_batching padded: corpus {corpus.path} records no example boundaries (build it "
                             f"with python -m msd_fast.lm corpus --tokenizer MODEL --source ...)")
        starts = corpus.starts[split]
    return SplitRows(corpus.splits[split], seq_len, device, corpus.mask(split), starts, corpus.eot_id, limit)
