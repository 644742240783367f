"""Self-speculative greedy decoding (LayerSkip's): a shallow exit drafts, the rest of the same model verifies,
and the output is the full model's greedy decoding token for token.

A round starts from the last emitted token t0, which no layer has seen yet. Draft: t0, d1, ..., d_{k-1} each
run through layers 0..l (the draft exit's layer) one at a time, writing those layers' KV cache, and the exit's
head picks d1, ..., dk. Verify: the k layer-l hidden states go through layers l+1..L-1 in one call per layer
(the early layers are not run again: their cache and outputs are the draft's), and the last head gives the full
model's choice f_i after each prefix. Drafts are accepted while d_i = f_i; at the first mismatch f_i is emitted
instead, and every layer's cache is cut back to the accepted positions (DynamicCache.crop). A round emits
between 1 and k tokens, each equal to full-depth greedy decoding's.

Cost per round: k x (l + 1 layer calls + a head) to draft, then L - 1 - l layer calls and one head, on k rows.
It pays where the draft is often right and a layer call costs more than its rows (batch-1 decoding is bound by
reading the weights)."""
import numbers
from typing import Optional, Sequence

import torch

from .decode import Decoded, Stepper, check_decode_args
from .exits import LMExits


@torch.no_grad()
def self_speculative_generate(model: LMExits, prompt: Sequence[int], max_new_tokens: int, draft_exit: int = 0,
                              draft_tokens: int = 4, stop_token: Optional[int] = None) -> Decoded:
    """Greedy decoding of up to max_new_tokens after `prompt`, drafted `draft_tokens` at a time by exit
    `draft_exit` (0-based, not the last) and verified by the rest of the model. Decoded.exit_index says which
    exit each token after the first came from (the draft exit for accepted drafts, the last for the rest);
    every token is verified at full depth (layers_used = L)."""
    prompt = check_decode_args(model, prompt, max_new_tokens)
    last = model.num_exits - 1
    if isinstance(draft_exit, bool) or not isinstance(draft_exit, numbers.Integral) or not 0 <= draft_exit < last:
        raise ValueError(f"draft_exit: expected an exit index in [0, {last - 1}] (not the last), got {draft_exit!r}")
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, numbers.Integral) or draft_tokens < 1:
        raise ValueError(f"draft_tokens: expected an int >= 1, got {draft_tokens!r}")
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    s = Stepper(model, [last])
    L, jd = model.num_layers, model.exit_layers[draft_exit]
    out = Decoded([], [], [])
    out.tokens.append(int(s.prefill(prompt).argmax()))

    def done() -> bool:
        return len(out.tokens) >= max_new_tokens or (stop_token is not None and out.tokens[-1] == stop_token)

    while not done():
        p0 = s.cached[0]
        k = min(int(draft_tokens), max_new_tokens - len(out.tokens))  # never draft past the tokens still wanted
        tok, hid, drafts = out.tokens[-1], [], []
        for i in range(k):  # draft: one token at a time through layers 0..jd
            x = s.embed(torch.tensor([[tok]], device=dev), torch.tensor([[p0 + i]], device=dev))
            for j in range(jd + 1):
                x = s.layer(j, x, torch.tensor([[p0 + i]], device=dev))
            hid.append(x[0, -1])
            tok = int(s.logits(draft_exit, x[0, -1]).argmax())
            drafts.append(tok)
        pos = torch.arange(p0, p0 + k, device=dev)[None]
        x = torch.stack(hid)[None]
        for j in range(jd + 1, L):  # verify: the k drafted positions through the deeper layers at once
            x = s.layer(j, x, pos)
        full = s.logits(last, x[0]).argmax(-1).tolist()
        n_ok = next((i for i in range(k) if drafts[i] != full[i]), k)
        emitted = drafts[:n_ok] + ([full[n_ok]] if n_ok < k else [])
        for i, t in enumerate(emitted):
            out.tokens.append(t)
            out.exit_index.append(draft_exit if i < n_ok else last)
            out.layers_used.append(L)
            if done():
                break
        keep = len(emitted)  # positions p0 .. p0 + keep - 1 stay in the cache: t0 and the accepted drafts
        if keep < k:
            s.cache.crop(-(k - keep))
        s.cached = [p0 + keep] * L
    out.tokens = out.tokens[:max_new_tokens]
    out.exit_index, out.layers_used = out.exit_index[:len(out.tokens) - 1], out.layers_used[:len(out.tokens) - 1]
    model.train(was)
    return s.finish(out)
