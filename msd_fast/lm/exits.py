"""Exits on a Hugging Face causal LM: `attach_lm_exits(model, exit_layers)` -> `LMExits`, whose forward gives
each exit's final-normed hidden states and the head(s), for the fused linear MSD loss
(msd_fast.loss.fused_linear_msd_loss): the N x B x T x V logits are never formed.

Exit n reads the output of decoder layer exit_layers[n] (0-based) from the trunk's own hidden-state outputs
(no second pass through the trunk) and applies the model's final norm to it, LayerSkip-style. The deepest exit
is always the last layer and its hidden states are the trunk's `last_hidden_state`, so its logits are the
model's own logits exactly. Heads: "shared" (every exit uses the model's lm_head) or "per_exit" (each
shallower exit gets its own head, initialised from the model's; the deepest keeps the model's).

Given `labels`, forward is a Hugging Face causal-LM drop-in (hf_loss.py): the loss over the exits is returned
as `.loss`, so `transformers.Trainer` trains the model unchanged."""
import json
import numbers
import pathlib
from typing import List, NamedTuple, Optional, Sequence, Union

from torch import Tensor, nn

from ..files import check_writable, sha256_of
from ..loss import FusedLinearMSDLoss
from .family import check_plain_head, family_of
from .hf_loss import causal_lm_exit_loss
from .names import EXITS_FILE, EXITS_FORMAT, EXITS_VERSION
from .names import LM_HEADS as HEADS


class LMExitOutput(NamedTuple):
    hidden: List[Tensor]                 # N x [B, T, H] after the final norm, shallow to deep
    weight: Union[Tensor, List[Tensor]]  # the shared head [V, H], or N heads
    bias: Optional[Union[Tensor, List[Tensor]]]


def even_exit_layers(num_layers: int, num_exits: int) -> List[int]:
    """num_exits layers spread evenly over the depth, the last layer included: 8 layers, 4 exits -> 1, 3, 5, 7."""
    if not 2 <= num_exits <= num_layers:
        raise ValueError(f"num_exits must be in [2, {num_layers}] for a {num_layers}-layer model, got {num_exits}")
    return [round((k + 1) * num_layers / num_exits) - 1 for k in range(num_exits)]


def _layer_indices(exit_layers) -> List[int]:
    """A list or tuple of integer layer indices (Python or NumPy ints) as ints; anything else (floats, strings,
    tensors, bools) is refused rather than truncated or parsed."""
    if not isinstance(exit_layers, (list, tuple, range)) or any(
            isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in exit_layers):
        seq = isinstance(exit_layers, (list, tuple, range))
        got = repr(list(exit_layers)) if seq else type(exit_layers).__name__
        raise ValueError(f"exit_layers: expected a list of integer layer indices, got {got:.80}")
    return [int(x) for x in exit_layers]


def exit_logits(out: LMExitOutput, n: int) -> Tensor:
    """Exit n's logits [..., V] from a forward's output (n indexes out.hidden), in the hidden states' dtype."""
    w = out.weight if isinstance(out.weight, Tensor) else out.weight[n]
    b = out.bias if out.bias is None or isinstance(out.bias, Tensor) else out.bias[n]
    dt = out.hidden[n].dtype
    return nn.functional.linear(out.hidden[n], w.to(dt), None if b is None else b.to(dt))


class LMExits(nn.Module):
    """A causal LM with exits (see the module docstring). forward(input_ids, attention_mask=None, labels=None, *,
    last_only=False, **trunk_kwargs) -> LMExitOutput, or with labels an LMExitLossOutput (.loss);
    `logits(out, n)` forms one exit's logits (evaluation, decoding). loss: the loss `labels` train
    (None: FusedLinearMSDLoss(), MSD at the library's defaults)."""
    # Hugging Face's Trainer reads these: it passes num_items_in_batch to forward and counts the items over
    # labels[..., 1:] (a causal LM's shift), as for its own *ForCausalLM models.
    accepts_loss_kwargs = True
    loss_type = "ForCausalLM"

    def __init__(self, lm: nn.Module, exit_layers: Sequence[int], heads: str = "shared",
                 loss: Optional[FusedLinearMSDLoss] = None):
        super().__init__()
        if loss is not None and not isinstance(loss, FusedLinearMSDLoss):
            raise TypeError(f"loss: expected a msd_fast.loss.FusedLinearMSDLoss or None, got {type(loss).__name__}")
        self.exit_loss = loss if loss is not None else FusedLinearMSDLoss()
        self.family = family_of(lm)
        check_plain_head(lm)
        L = len(getattr(lm.base_model, self.family.layers))
        layers = _layer_indices(exit_layers)
        if not layers or any(not 0 <= x < L for x in layers) or layers != sorted(set(layers)):
            raise ValueError(f"exit_layers: expected increasing layer indices in [0, {L - 1}], got {list(exit_layers)}")
        if layers[-1] != L - 1:
            layers.append(L - 1)  # the deepest exit is the model's own output
        if len(layers) < 2:
            raise ValueError(f"exit_layers: need at least one exit before the last layer ({L - 1}), got "
                             f"{list(exit_layers)}")
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
        self.lm, self.exit_layers, self.heads = lm, tuple(layers), heads
        head = lm.get_output_embeddings()
        self.exit_heads = nn.ParameterList(
            [nn.Parameter(head.weight.detach().clone()) for _ in layers[:-1]] if heads == "per_exit" else [])

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    @property
    def num_layers(self) -> int:
        return len(self.trunk_layers)

    @property
    def trunk(self) -> nn.Module:
        return self.lm.base_model

    @property
    def trunk_layers(self) -> nn.ModuleList:
        return getattr(self.trunk, self.family.layers)

    @property
    def norm(self) -> nn.Module:
        return getattr(self.trunk, self.family.norm)

    @property
    def config(self):
        """The wrapped model's transformers config (Hugging Face tools read it)."""
        return self.lm.config

    # Activation checkpointing of the decoder layers, done by the wrapped model: Hugging Face's Trainer calls
    # activation_checkpointing_enable (transformers >= 5) or gradient_checkpointing_enable (older ones).
    def activation_checkpointing_enable(self, **kwargs) -> None:
        (getattr(self.lm, "activation_checkpointing_enable", None) or self.lm.gradient_checkpointing_enable)(**kwargs)

    def activation_checkpointing_disable(self) -> None:
        (getattr(self.lm, "activation_checkpointing_disable", None) or self.lm.gradient_checkpointing_disable)()

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.lm.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    @property
    def vocab_size(self) -> int:
        return self.lm.get_output_embeddings().weight.shape[0]

    def head(self, n: int):
        """(weight [V, H], bias or None) of exit n (negative n counts from the deepest)."""
        n = n % self.num_exits
        lin = self.lm.get_output_embeddings()
        w = self.exit_heads[n] if self.heads == "per_exit" and n < self.num_exits - 1 else lin.weight
        return w, lin.bias

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, labels: Optional[Tensor] = None, *,
                last_only: bool = False, num_items_in_batch=None, shift_labels: Optional[Tensor] = None,
                **trunk_kwargs):
        """attention_mask and trunk_kwargs (position_ids, ...) go to the trunk as in the model's own forward.
        labels [B, T] (unshifted; -100 ignored) or shift_labels (already shifted): returns the loss over the exits
        (hf_loss.causal_lm_exit_loss: num_items_in_batch, as Hugging Face's Trainer passes it, divides the
        summed loss)."""
        if labels is not None or shift_labels is not None:
            if last_only:
                raise ValueError("last_only: the loss over the exits needs every exit; call without labels")
            out = self._exit_output(input_ids, attention_mask, False, trunk_kwargs)
            return causal_lm_exit_loss(self.exit_loss, out, labels, shift_labels, num_items_in_batch)
        return self._exit_output(input_ids, attention_mask, last_only, trunk_kwargs)

    def _exit_output(self, input_ids, attention_mask, last_only: bool, trunk_kwargs) -> LMExitOutput:
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=not last_only,
                         use_cache=False, **trunk_kwargs)
        deepest = out.last_hidden_state
        if last_only:
            hidden = [deepest]
        else:  # hidden_states[j + 1] is the output of layer j; the last entry is already normed
            hidden = [self.norm(out.hidden_states[j + 1]) for j in self.exit_layers[:-1]] + [deepest]
        bias = self.lm.get_output_embeddings().bias
        if self.heads == "shared" or last_only:
            return LMExitOutput(hidden, self.head(-1)[0], bias)
        return LMExitOutput(hidden, [self.head(n)[0] for n in range(self.num_exits)],
                            None if bias is None else [bias] * self.num_exits)

    def save_pretrained(self, folder, **kwargs) -> None:
        """A Hugging Face folder that plain transformers loads as the base model (`from_pretrained(folder)`),
        plus the exits: exit_heads.safetensors (per_exit heads) and msd_exits.json (exit layers, heads, the
        loss's settings, every file's SHA-256; written last, so a half-written folder has none and is not read).
        msd_fast.lm.load_lm_exits(folder) reads it back. kwargs go to the wrapped model's save_pretrained."""
        from safetensors.torch import save_file

        out = pathlib.Path(folder)
        check_writable(out, "folder", True)
        out.mkdir(parents=True, exist_ok=True)
        (out / EXITS_FILE).unlink(missing_ok=True)
        self.lm.save_pretrained(out, **kwargs)
        (out / "exit_heads.safetensors").unlink(missing_ok=True)
        if self.heads == "per_exit":
            save_file({f"exit_{n}": p.detach().contiguous() for n, p in enumerate(self.exit_heads)},
                      str(out / "exit_heads.safetensors"))
        L = self.exit_loss
        ew = L.exit_weights
        loss = {"alpha": L.alpha, "temperature": L.temperature, "beta": float(L.beta), "teacher": L.teacher,
                "detach_teacher": bool(L.detach_teacher), "ignore_index": L.ignore_index,
                "feature_reduction": L.feature_reduction, "chunk_tokens": L.chunk_tokens,
                "exit_weights": None if ew is None else [float(w) for w in ew]}
        files = sorted(p for p in out.iterdir() if p.is_file() and p.name != EXITS_FILE)
        meta = {"format": EXITS_FORMAT, "format_version": EXITS_VERSION, "exit_layers": list(self.exit_layers),
                "heads": self.heads, "loss": loss, "sha256": {p.name: sha256_of(p) for p in files}}
        (out / EXITS_FILE).write_text(json.dumps(meta, indent=1))

    def logits(self, out: LMExitOutput, n: int) -> Tensor:
        return exit_logits(out, n)

    def extra_repr(self) -> str:
        return f"family={self.family.name}, exit_layers={list(self.exit_layers)}, heads={self.heads!r}"


def attach_lm_exits(model: nn.Module, exit_layers: Optional[Sequence[int]] = None, heads: str = "shared",
                    num_exits: int = 4, loss: Optional[FusedLinearMSDLoss] = None) -> LMExits:
    """Exits on a Hugging Face causal LM (Llama, Qwen2, GPT-2 families).

    exit_layers: 0-based decoder layers whose outputs are exits; the last layer is added when missing.
        Default: `num_exits` layers spread evenly (even_exit_layers).
    heads: "shared" (the model's final norm + lm_head for every exit) or "per_exit" (a head per shallower exit
        initialised from the model's; the norm stays shared).
    loss: what forward(..., labels=...) returns as .loss: a FusedLinearMSDLoss (its alpha, temperature, teacher,
        exit_weights; alpha=0 is joint training); None: FusedLinearMSDLoss() (MSD at the library's defaults).

    The result's forward(input_ids) gives LMExitOutput(hidden, weight, bias) for
    `fused_linear_msd_loss(out.hidden, out.weight, target, bias=out.bias)`."""
    fam = family_of(model)
    if exit_layers is None:
        exit_layers = even_exit_layers(len(getattr(model.base_model, fam.layers)), num_exits)
    return LMExits(model, exit_layers, heads, loss)
