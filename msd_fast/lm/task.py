"""The language-model task of `python -m msd_fast.train` (msd_fast.train.task's interface): a built corpus
(corpus.py) cut into sequences of seq_len + 1 tokens, a causal LM with exits (models.py), the method's
criterion computed by the fused linear MSD loss (the N x B x T x V logits never exist), and per-exit
validation perplexity.

Targets: position t of a sequence predicts token t + 1 (inputs s[:-1], targets s[1:]), HF's own convention.
Sequences are the corpus split cut into consecutive, non-overlapping windows; an epoch visits every training
window once in a seeded order, like an image epoch."""
import json
import pathlib
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataError
from ..files import sha256_of
from ..loss import ExitCurriculum, FusedLinearMSDLoss, exit_weight_schedule
from ..loss.exit_weights import RENORMALISED
from ..train.batches import EpochOrderOnDevice, epoch_order
from ..train.methods import LossSpec, final_exit_terms
from ..train.task import Task
from .corpus import CorpusError, corpus_dir, load_corpus, windows
from .evaluate import evaluate_lm
from .exits import LMExits, exit_logits
from .hf_loss import exit_loss_inputs
from .layer_dropout import LayerDropout
from .load import check_resume_fits
from .models import create_lm, pretrained_lm
from .names import EVAL_SEQUENCES, is_model_folder
from .rows import SplitRows, split_rows


CURRICULA_VERSION = 2  # 2: rotational and gradual are torchtune's (renormalised weights); checkpoints record it


class LMCriterion(nn.Module):
    """An "msd" LossSpec (alpha, temperature, teacher, hint) on an LM's exits, through the fused linear MSD loss;
    targets equal to -100 are ignored. exit_weights: None, or a device tensor [N] that a curriculum may change
    in place between steps."""

    def __init__(self, spec: LossSpec, exit_weights):
        super().__init__()
        if spec.label_smoothing:
            raise ValueError(f"task lm: the fused linear MSD loss has no label smoothing; the method's LossSpec "
                             f"asks for {spec.label_smoothing}")
        self.hint = spec.hint
        self.loss = FusedLinearMSDLoss(alpha=spec.alpha, temperature=spec.temperature, teacher=spec.teacher,
                                       detach_teacher=spec.detach_teacher, feature_reduction=spec.feature_reduction,
                                       exit_weights=exit_weights, validate=False)  # ids checked by load_corpus

    def forward(self, out, target: torch.Tensor, beta: torch.Tensor):
        hidden, w, b = exit_loss_inputs(out)
        return self.loss(hidden, w, target, b, beta=beta if self.hint else 0.0, return_terms=True)


class LMFinalCE(nn.Module):
    """A "final_ce" LossSpec on an LM: the last exit's cross-entropy, its logits [B, T, V] formed once; the other
    exits' terms are zeros, so logs keep one column per exit."""

    def __init__(self, spec: LossSpec, num_exits: int):
        super().__init__()
        self.label_smoothing, self.num_exits = spec.label_smoothing, num_exits

    def forward(self, out, target, beta):
        logits = exit_logits(out, len(out.hidden) - 1)  # the model may have computed the last exit only
        # a sum over the kept tokens over their count: no kept token gives 0, not 0/0 (the fused loss's rule)
        loss = F.cross_entropy(logits.flatten(0, -2).float(), target.flatten(), label_smoothing=self.label_smoothing,
                               reduction="sum") / (target != -100).sum().clamp(min=1)
        return loss, final_exit_terms(loss, self.num_exits)


class TokenBatches:
    """Training batches of a split's rows (rows.py: packed windows or padded examples; batches.py's protocol):
    draw -> (idx [b], aug [0, b]), make -> (inputs [b, T], targets [b, T]) on the device, no host sync."""

    def __init__(self, rows: SplitRows, dist, batch_size: int):
        self.rows, self.n_seq, self.dist, self.batch_size = rows, rows.n, dist, batch_size
        self.order = EpochOrderOnDevice()

    @property
    def on_device(self) -> bool:
        return self.rows.tokens.is_cuda

    def epoch_order(self, seed: int, epoch: int) -> Tuple[torch.Tensor, torch.Generator]:
        return epoch_order(self.n_seq, seed, epoch)

    def draw(self, perm: torch.Tensor, step: int, aug_gen: torch.Generator):
        G, r, w = self.batch_size, self.dist.rank, self.dist.world_size
        idx = self.order.on(perm, self.rows.tokens.device)[step * G:(step + 1) * G][r::w]
        return idx, idx.new_zeros((0, idx.shape[0]))

    def make(self, idx: torch.Tensor, aug: torch.Tensor):
        return self.rows.rows(idx)


class LMTask(Task):
    metric, metric_name, metric_title, higher_is_better, train_acc = "ppl", "perplexity", "perplexity", False, False
    throughput_unit = "tokens"

    def __init__(self, cfg, device, dist, speed, amp_dtype, data=None, model=None):
        if data is not None:
            raise ValueError("data: task lm reads its corpus from --data-dir (python -m msd_fast.lm corpus builds "
                             "it); a Dataset object is for image tasks")
        self.cfg, self.device, self.dist, self.amp_dtype = cfg, device, dist, amp_dtype
        path = corpus_dir(cfg.data_dir)
        try:
            self.corpus = load_corpus(path)
        except CorpusError as e:
            hint = "" if "msd_fast.lm corpus" in str(e) else \
                f". Build it with: python -m msd_fast.lm corpus --out {path}"
            raise DataError(f"{e}{hint}") from None
        T = cfg.seq_len
        try:
            rows = split_rows(self.corpus, "train", T, cfg.lm_batching, device, cfg.train_subset)
        except ValueError as e:
            raise DataError(str(e)) from None
        if rows.n < 1:
            raise DataError(f"corpus {path}: the train split has {len(self.corpus.splits['train'])} tokens, fewer "
                            f"than one sequence of --seq-len {T} + 1")
        for split in ("val", "test"):  # found now, not after the first epoch
            if windows(self.corpus.splits[split], T)[1] < 1 and cfg.lm_batching == "packed":
                raise DataError(f"corpus {path}: the {split} split ({split}.bin, {len(self.corpus.splits[split])} "
                                f"tokens) holds no sequence of --seq-len {T} + 1")
        # whether some targets are -100 (Task.loss_items): prompts masked, or padding
        self.masked = self.corpus.mask("train") is not None or cfg.lm_batching == "padded"
        self.train_size, self.units_per_sample = rows.n, T  # the log's throughput counts tokens
        self.batches = TokenBatches(rows, dist, cfg.batch_size)
        self._eval_rows: Dict[str, SplitRows] = {}
        torch.manual_seed(cfg.seed)
        self.pretrained = model is None and is_model_folder(cfg.model)
        if self.pretrained:
            model = self._pretrained(cfg, path)
        elif model is None:
            args = (cfg.model, self.corpus.vocab_size, T, cfg.width, cfg.exit_layers, cfg.lm_heads)
            if cfg.resume:  # a checkpoint's config that does not fit its weights is refused before allocating
                with torch.device("meta"):
                    check_resume_fits(create_lm(*args), cfg.resume)
            model = create_lm(*args)
        elif not isinstance(model, LMExits):
            raise TypeError(f"model: task lm trains an LMExits (msd_fast.lm.attach_lm_exits), got "
                            f"{type(model).__name__}")
        if model.vocab_size != self.corpus.vocab_size and not self.pretrained:
            raise ValueError(f"model: its head has {model.vocab_size} tokens, but the corpus {path} has a vocabulary "
                             f"of {self.corpus.vocab_size}")
        self.model = model.to(device)
        if cfg.activation_checkpointing:  # the wrapped model's own, per decoder layer (non-reentrant)
            lm, kw = self.model.lm, {"use_reentrant": False}
            if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        self.layer_dropout = LayerDropout(self.model, cfg.layer_dropout, cfg.layer_dropout_scale, cfg.seed) \
            if cfg.layer_dropout else None
        self.exit_weights = exit_weight_schedule(cfg.exit_weights, [d + 1 for d in self.model.exit_layers],
                                                 cfg.exit_scale)
        self.curriculum = ExitCurriculum(cfg.exit_curriculum, self.model.exit_layers, self.model.num_layers)
        # the loss reads exit_weights_t; before_step writes each step's weights into it (on the device, no sync)
        plain = cfg.exit_curriculum == "none" and all(w == 1.0 for w in self.exit_weights)
        self.exit_weights_t, self._at = None, None
        if not plain:
            self._last_part, self._shallower_parts = self.curriculum.parts(cfg.exit_weights, cfg.exit_scale, device)
            self.exit_weights_t = torch.empty_like(self._last_part)
            self.before_step(0, 0.0)
        self.input_size = (T,)
        self.cost = lm_cost(self.model, T)

    def _pretrained(self, cfg, path) -> LMExits:
        """The Hugging Face model folder cfg.model with exits; its tokenizer must be the one the corpus was
        tokenised with (the same tokenizer.json), its head must cover the corpus's ids."""
        folder = pathlib.Path(cfg.model)
        tok = folder / "tokenizer.json"
        if not tok.is_file():
            raise DataError(f"model {folder}: no tokenizer.json, so the corpus {path} cannot be known to be "
                            f"tokenised by its tokenizer (python -m msd_fast.lm corpus --tokenizer reads it)")
        if sha256_of(tok) != self.corpus.meta.get("tokenizer_sha256"):
            raise DataError(f"corpus {path} was not tokenised by {folder}'s tokenizer.json: build it with python -m "
                            f"msd_fast.lm corpus --tokenizer {folder} --source ... --out {path}")
        if cfg.resume:  # a checkpoint that does not fit the folder's model is refused before allocating
            check_resume_fits(pretrained_lm(folder, cfg.seq_len, cfg.exit_layers, cfg.lm_heads, meta=True),
                              cfg.resume)
        model = pretrained_lm(folder, cfg.seq_len, cfg.exit_layers, cfg.lm_heads)
        if model.vocab_size < self.corpus.vocab_size:
            raise ValueError(f"model {folder}: its head has {model.vocab_size} tokens, fewer than the corpus {path}'s "
                             f"vocabulary of {self.corpus.vocab_size}")
        return model

    def criterion(self, spec):
        if not isinstance(spec, LossSpec):
            raise ValueError(f"task lm: the method returned a {type(spec).__name__}, not a LossSpec; the LM task "
                             f"forms no logits for a criterion module to read (methods.py: LossSpec)")
        return LMCriterion(spec, self.exit_weights_t) if spec.kind == "msd" else LMFinalCE(spec, self.model.num_exits)

    def before_step(self, step: int, progress: float) -> None:
        if self.layer_dropout is not None:
            self.layer_dropout.set_step(step)  # the draws are a function of the step: a resume draws the same
        at = self.curriculum.at(step, progress)
        if self.exit_weights_t is not None and at != self._at:
            torch.add(self._last_part, self._shallower_parts[at[0]], alpha=at[1], out=self.exit_weights_t)
            self._at = at

    def loss_items(self, y):
        """The kept tokens (targets other than -100): every token of a plain corpus (an int, so the step needs no
        count), a device count where the data masks some (prompts, padding)."""
        return y.numel() if not self.masked else (y != -100).sum()

    def correct(self, out, y):
        return torch.zeros(len(out.hidden), device=y.device)  # no token accuracy in training: no logits formed

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, Any]:
        if split not in self._eval_rows:  # built once: every epoch evaluates the same rows
            self._eval_rows[split] = split_rows(self.corpus, split, self.cfg.seq_len, self.cfg.lm_batching,
                                                self.device, self.cfg.val_size or EVAL_SEQUENCES)
        return evaluate_lm(self.model, self._eval_rows[split], self.cfg.eval_batch_size, self.device,
                           self.amp_dtype)

    def checkpoint_fields(self) -> Dict[str, Any]:
        m = self.model
        lm = {"seq_len": self.cfg.seq_len, "exit_layers": list(m.exit_layers), "heads": m.heads,
              "corpus_train_sha256": self.corpus.train_sha256, "curricula": CURRICULA_VERSION}
        if self.pretrained:  # the checkpoint stands alone: the folder's config rebuilds the model (load.py)
            lm["hf_config"] = json.loads(m.lm.config.to_json_string(use_diff=False))
        return {"model_name": self.cfg.model, "num_classes": self.corpus.vocab_size, "width": self.cfg.width,
                "dataset": self.cfg.dataset, "lm": lm}

    def differs(self, ckpt: Dict[str, Any]) -> str:
        """Also the exits, the sequence length and the corpus: a resume onto another corpus (--data-dir) would
        train on other data without a word."""
        why = super().differs(ckpt)
        mine, theirs = self.checkpoint_fields()["lm"], ckpt.get("lm") if isinstance(ckpt.get("lm"), dict) else {}
        more = [f"{k} {theirs.get(k)!r} (this run: {mine[k]!r})" for k in ("seq_len", "exit_layers", "heads")
                if theirs.get(k) != mine[k]]
        if self.cfg.exit_curriculum in RENORMALISED and theirs.get("curricula") != CURRICULA_VERSION:
            more.append(f"its exit_curriculum {self.cfg.exit_curriculum} is msd_fast's earlier one (fixed weights; the "
                        f"earlier rotational is now round_robin), not torchtune's that the name means now: start a "
                        f"new run")
        if theirs.get("corpus_train_sha256") != mine["corpus_train_sha256"]:
            more.append(f"its corpus's train split (SHA-256 {str(theirs.get('corpus_train_sha256'))[:12]}...) is not "
                        f"{self.corpus.path}'s ({mine['corpus_train_sha256'][:12]}...): resume with the corpus it was "
                        f"trained on (--data-dir)")
        return ", ".join(([why] if why else []) + more)


def lm_cost(model, seq_len: int) -> Dict[str, Any]:
    """Parameters and FLOPs per sequence up to each exit (torch.utils.flop_counter on one forward of seq_len
    tokens: the embedding and layers up to the exit, plus the head)."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(model.parameters()).device
    x = torch.zeros(1, seq_len, dtype=torch.long, device=dev)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    per_module = counter.get_flop_counts()
    layer_flops = []
    for j in range(model.num_layers):
        key = next((k for k in per_module if k.endswith(f".{model.family.layers}.{j}")), None)
        layer_flops.append(sum(per_module[key].values()) if key else 0)
    H = model.head(-1)[0].shape[1]
    head = 2 * seq_len * H * model.vocab_size
    exit_flops = [sum(layer_flops[:j + 1]) + head for j in model.exit_layers]
    return {"params": sum(p.numel() for p in model.parameters()), "exit_flops": exit_flops}
