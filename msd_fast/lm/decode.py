"""Early-exit greedy decoding: each new token leaves at the first exit whose top probability reaches a
threshold, so the layers above that exit are not run for it then.

The skipped layers' KV cache (what later tokens attend to) is filled by deferred recomputation: a token that
left at exit layer l keeps its layer-l hidden state; the next token that goes deeper than l carries it along,
so each deeper layer runs on [the skipped tokens..., the new token] at once, in order, and writes their keys
and values. The cache therefore holds exactly what full-depth decoding would hold (the layer inputs are the
same hidden states), and only the choice of the emitted token changes; layers are skipped for the tokens that
exit and batched for the catch-up. At a threshold above 1 no token exits and the output is the full model's
greedy decoding, token for token.

The decoder calls the model's own decoder layers one at a time with its own cache object (transformers'
DynamicCache), a causal mask for the rows it runs, and the positions (rotary embeddings for Llama / Qwen2,
learned positions for GPT-2)."""
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .exits import LMExits
from .family import cache_kwarg, layer_output, max_positions


@dataclass
class Decoded:
    tokens: List[int]                      # the generated tokens (prompt excluded)
    exit_index: List[int]                  # per generated token, the exit it left at (0 = shallowest)
    layers_used: List[int]                 # per generated token, the layers run for it before it was emitted
    layer_rows: int = 0                    # decoder-layer rows run after the prompt (catch-up rows included)
    layer_calls: int = 0                   # decoder-layer calls after the prompt (each reads the layer's weights)
    head_checks: int = 0                   # exit heads applied after the prompt (each reads a V x H matrix)
    prefill_seconds: float = 0.0           # the prompt, at full depth
    seconds: float = 0.0                   # the generation after the prompt
    full_logits: Dict[int, torch.Tensor] = field(default_factory=dict)  # position -> final-layer logits


class Stepper:
    """One sequence's decoding state: the cache, how many positions each layer has cached, and the latest
    hidden state of every token whose deeper layers are still to run."""

    def __init__(self, model: LMExits, exits: Sequence[int]):
        from .hf import transformers

        tf = transformers()
        self.m, self.base, self.fam = model, model.trunk, model.family
        self.layers = model.trunk_layers
        try:
            self.cache = tf.DynamicCache(config=model.lm.config)
        except TypeError:  # older transformers
            self.cache = tf.DynamicCache()
        self.kw = cache_kwarg(self.layers[0])
        self.cached = [0] * len(self.layers)   # layer j has KV for positions [0, cached[j])
        self.pending: Dict[int, torch.Tensor] = {}   # position -> its deepest computed layer output [H]
        self.exit_at = {model.exit_layers[n]: n for n in exits}  # the exits checked, by layer
        self.rows = self.calls = self.checks = 0

    def embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = getattr(self.base, self.fam.embed)(ids)
        if self.fam.pos_embed:
            x = x + getattr(self.base, self.fam.pos_embed)(pos)
        return x

    def layer(self, j: int, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q, k = x.shape[1], int(pos[0, -1]) + 1
        allowed = torch.arange(k, device=x.device)[None, :] <= pos[0, :, None]
        mask = torch.zeros(q, k, dtype=x.dtype, device=x.device).masked_fill_(~allowed, torch.finfo(x.dtype).min)
        kw = {self.kw: self.cache, "attention_mask": mask[None, None], "use_cache": True, "position_ids": pos}
        if self.fam.rotary:
            kw["position_embeddings"] = getattr(self.base, self.fam.rotary)(x, pos)
        self.rows += q
        self.calls += 1
        return layer_output(self.layers[j](x, **kw))

    def logits(self, n: int, h: torch.Tensor) -> torch.Tensor:
        self.checks += 1
        w, b = self.m.head(n)
        return F.linear(self.m.norm(h), w, b)

    def prefill(self, prompt: Sequence[int]) -> torch.Tensor:
        """Runs the prompt at full depth (timed apart, its rows not counted); the last position's logits."""
        self.t0 = time.perf_counter()
        _, _, logits = self.step(torch.tensor(list(prompt), device=next(self.m.parameters()).device), 2.0)
        self.t1 = time.perf_counter()
        self.rows = self.calls = self.checks = 0
        return logits

    def finish(self, out: "Decoded") -> "Decoded":
        """Fills the timings and counters into `out`."""
        out.prefill_seconds, out.seconds = self.t1 - self.t0, time.perf_counter() - self.t1
        out.layer_rows, out.layer_calls, out.head_checks = self.rows, self.calls, self.checks
        return out

    def step(self, ids: torch.Tensor, threshold: float):
        """Runs positions [p0, p0 + len(ids)) (a prompt, or one new token) from layer 0 until an exit is
        confident about the last one or the last layer; returns (exit index, layers run, last logits)."""
        p0 = self.cached[0]
        p1 = p0 + ids.shape[0]
        start = p0
        x = self.embed(ids[None], torch.arange(p0, p1, device=ids.device)[None])
        L = len(self.layers)
        for j in range(L):
            need = self.cached[j]
            if need < start:  # tokens that left at layer j - 1 catch up here
                x = torch.cat([torch.stack([self.pending.pop(t) for t in range(need, start)])[None], x], 1)
                start = need
            x = self.layer(j, x, torch.arange(start, p1, device=ids.device)[None])
            self.cached[j] = p1
            n = self.exit_at.get(j)
            if n is None or (threshold > 1.0 and j < L - 1):  # full depth checks no intermediate exit
                continue
            logits = self.logits(n, x[0, -1])
            if j == L - 1 or logits.softmax(-1).max() >= threshold:
                if j < L - 1:
                    for i, t in enumerate(range(start, p1)):
                        self.pending[t] = x[0, i]
                return n, j + 1, logits
        raise AssertionError("the last layer is always an exit")


def check_decode_args(model, prompt: Sequence[int], max_new_tokens: int) -> List[int]:
    """What every decoder needs: an LMExits; a prompt of at least one token id in [0, V); max_new_tokens an
    int >= 0; the prompt and the new tokens within the model's positions. Returns the prompt as ints."""
    if not isinstance(model, LMExits):
        raise TypeError(f"model: expected an LMExits (attach_lm_exits), got {type(model).__name__}")
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.tolist()  # a 1-D integer tensor -> ints; anything else is refused below
    ids = list(prompt) if isinstance(prompt, (list, tuple, range)) else None
    if ids is None or any(isinstance(t, bool) or not isinstance(t, numbers.Integral) for t in ids):
        raise TypeError(f"prompt: expected a sequence of token ids (ints), got {type(prompt).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if not ids:
        raise ValueError("prompt: need at least one token")
    V = model.vocab_size
    if min(ids) < 0 or max(ids) >= V:
        raise ValueError(f"prompt: token ids must lie in [0, {V}) (the model's vocabulary), got {min(ids)}..{max(ids)}")
    top = max_positions(model.lm)
    if top is not None and len(ids) + max_new_tokens > top:
        raise ValueError(f"prompt: {len(ids)} tokens + max_new_tokens {max_new_tokens} exceed the model's "
                         f"{top} positions")
    return [int(t) for t in ids]


def check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"threshold: expected a finite number >= 0 (above 1: never exit early), got {threshold!r}")
    return float(threshold)


@torch.no_grad()
def early_exit_generate(model: LMExits, prompt: Sequence[int], max_new_tokens: int, threshold: float = 0.9,
                        stop_token: Optional[int] = None, keep_full_logits: bool = False,
                        exits: Optional[Sequence[int]] = None) -> Decoded:
    """Greedy decoding of up to max_new_tokens after `prompt` with early exits at `threshold` (the top
    probability an exit needs to emit the token; > 1: never exit early, i.e. full-depth greedy decoding).
    The prompt runs at full depth. exits: the exit indices whose confidence is checked (default all; the last
    exit always emits what reaches it): each check reads a V x H head, so checking fewer exits can pay where
    a head costs more than the layers between exits. keep_full_logits: also keep, for every token emitted by
    the last exit, the logits it was chosen from (tests compare them with a full forward)."""
    prompt = check_decode_args(model, prompt, max_new_tokens)
    threshold = check_threshold(threshold)
    last = model.num_exits - 1
    if exits is not None and any(not 0 <= int(n) <= last for n in exits):
        raise ValueError(f"exits: expected exit indices in [0, {last}], got {list(exits)}")
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    s = Stepper(model, sorted({int(n) for n in (range(last) if exits is None else exits)} | {last}))
    out = Decoded([], [], [])
    logits = s.prefill(prompt)
    for _ in range(max_new_tokens):
        tok = int(logits.argmax())
        out.tokens.append(tok)
        if stop_token is not None and tok == stop_token:
            break
        if len(out.tokens) == max_new_tokens:
            break
        n, used, logits = s.step(torch.tensor([tok], device=dev), threshold)
        out.exit_index.append(n)
        out.layers_used.append(used)
        if keep_full_logits and n == model.num_exits - 1:
            out.full_logits[len(prompt) + len(out.tokens) - 1] = logits.clone()
    model.train(was)
    return s.finish(out)
