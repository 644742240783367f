"""`python -m msd_fast.lm`: the language-model commands besides training (python -m msd_fast.train -c
lm_stdlib_cpu trains).

    python -m msd_fast.lm corpus [--out data/python-stdlib-bpe] [--source python-stdlib|DIR] [--vocab-size 8192]
    python -m msd_fast.lm corpus --tokenizer MODEL_DIR --source DIR|FILE.jsonl --out DIR   # your data (text_data.py)
    python -m msd_fast.lm evaluate RUN [--split test] [--max-sequences K] [--json FILE]
    python -m msd_fast.lm decode RUN [--prompt TEXT | --prompts K] [--new-tokens 48] [--rounds 3] [--thresholds ...]
                                     [--check-exits K ...] [--draft-tokens K ...] [--draft-exit N] [--json FILE]
    python -m msd_fast.lm export RUN OUT       # a Hugging Face model folder + the exits (export.py)

evaluate: per-exit perplexity and the early-exit curve (teacher-forced); decode: early-exit greedy decoding
(decode.py) at each threshold, and self-speculative decoding (speculative.py), against full-depth decoding,
interleaved in rounds (decode_sweep.py): tokens/s and its ratio to full depth, agreement, layers used, layer
calls, head checks and weights read per token.
Every argument and file is checked before work starts. Exit status: 0 done, 1 a result could not be written,
2 bad arguments, corpus, checkpoint or export (one line on stderr), 130 interrupted by Ctrl-C."""
import argparse
import json
import math
import pathlib
import sys

import torch

from ..checkpoint import CheckpointError
from ..data import DataError
from ..devices import parse_device
from ..files import check_writable
from ..interrupt import EXIT_INTERRUPTED, command_started
from .corpus import DEFAULT_CORPUS, CorpusError, build_corpus, check_same_corpus, corpus_dir, load_corpus
from .rows import split_rows
from .text_data import build_text_corpus
from .evaluate import THRESHOLDS, evaluate_lm
from .load import load_lm


def _corpus_of(rec, data_dir, what: str):
    """The corpus to evaluate or decode on: --data-dir, else the run's; it must be the one trained on."""
    corpus = load_corpus(corpus_dir(data_dir or rec["config"].get("data_dir")))
    check_same_corpus(corpus, rec["trained_on"], what)
    return corpus


def cmd_corpus(a) -> dict:
    if a.tokenizer is not None:
        if a.vocab_size is not None:
            raise ValueError(f"--vocab-size {a.vocab_size}: the vocabulary is --tokenizer's; pass one of the two")
        meta = build_text_corpus(a.out, a.source, a.tokenizer, a.pattern)
    else:
        meta = build_corpus(a.out, a.source, a.vocab_size or 8192, a.pattern)
    s = meta["splits"]
    unit = "rows" if "rows" in s["train"] else "files"
    print(f"[msd_fast.lm] corpus {a.out}: vocabulary {meta['vocab_size']}, tokens train {s['train']['tokens']:,} "
          f"/ val {s['val']['tokens']:,} / test {s['test']['tokens']:,} "
          f"({unit} {' / '.join(str(s[x][unit]) for x in s)})")
    return meta


def cmd_evaluate(a) -> dict:
    model, rec = load_lm(a.run, a.device)
    corpus = _corpus_of(rec, a.data_dir, a.run)
    rows = split_rows(corpus, a.split, rec["lm"]["seq_len"], rec["config"].get("lm_batching", "packed"),
                      torch.device(a.device), a.max_sequences)
    res = evaluate_lm(model, rows, 64, torch.device(a.device), thresholds=a.thresholds)
    print(f"per-exit perplexity on {a.split} ({res['tokens']:,} tokens), exits after layers "
          f"{[j + 1 for j in model.exit_layers]}: " + " / ".join(f"{p:.2f}" for p in res["exits"]))
    print("| threshold | perplexity | agreement with last exit (%) | average layers |\n|---|---|---|---|")
    for r in res["curve"]:
        print(f"| {r['threshold']:.2f} | {r['ppl']:.2f} | {r['agreement']:.1f} | {r['avg_layers']:.2f} |")
    return {"run": str(a.run), "split": a.split, "exit_layers": list(model.exit_layers), **res}


def cmd_export(a) -> dict:
    from .export import export_lm

    res = export_lm(a.run, a.out, a.data_dir)
    print(f"[msd_fast.lm] exported {a.run} to {a.out} (hf/, exits.json)")
    return res


def cmd_decode(a) -> dict:
    from .decode import check_decode_args
    from .decode_sweep import decode_prompts, decode_sweep, setting_label

    model, rec = load_lm(a.run, a.device)
    corpus = _corpus_of(rec, a.data_dir, a.run)
    tok = corpus.tokenizer()
    prompts = [tok.encode(a.prompt).ids] if a.prompt is not None else decode_prompts(corpus, a.prompts,
                                                                                      a.prompt_tokens)
    if not all(prompts):
        raise ValueError("--prompt: the text encodes to no tokens")
    if not 0 <= a.draft_exit < model.num_exits - 1 and a.draft_tokens:
        raise ValueError(f"--draft-exit: expected an exit in [0, {model.num_exits - 2}] (not the last), got "
                         f"{a.draft_exit}")
    if a.check_exits and max(a.check_exits) >= model.num_exits:
        raise ValueError(f"--check-exits: the model has exits 0..{model.num_exits - 1}, got {a.check_exits}")
    for p in prompts:
        check_decode_args(model, p, a.new_tokens)
    torch.set_num_threads(a.threads) if a.threads else None
    sets = (None,) + ((tuple(a.check_exits),) if a.check_exits else ())
    drafts = [(a.draft_exit, k) for k in a.draft_tokens]
    rows = decode_sweep(model, prompts, a.new_tokens, a.thresholds, a.rounds, exit_sets=sets, drafts=drafts)
    print("| setting | tokens/s | x full depth | agreement with full depth (%) | identical outputs (%) | "
          "layers before emitting | from early exits (%) | layer calls / token | head checks / token | "
          "weights read x full |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {setting_label(r)} | {r['tokens_per_s']:.1f} | {r['speed_vs_full']:.2f} | {r['agreement']:.1f} | "
              f"{r['identical']:.0f} | {r['avg_layers']:.2f} | {r['early_share']:.0f} | "
              f"{r['layer_calls_per_token']:.2f} | {r['head_checks_per_token']:.2f} | {r['weights_vs_full']:.2f} |")
    if a.prompt is not None:
        from .decode import early_exit_generate

        g = early_exit_generate(model, prompts[0], a.new_tokens, a.thresholds[-1] if a.thresholds else 0.9)
        print(tok.decode(prompts[0] + g.tokens))
    return {"run": str(a.run), "prompts": len(prompts), "new_tokens": a.new_tokens, "rounds": a.rounds,
            "device": a.device, "threads": torch.get_num_threads(), "rows": rows}


def check_args(a) -> None:
    """The arguments' own rules, checked before any file is read or written (ValueError naming the flag)."""
    def at_least(flag: str, v, lo: int) -> None:
        if v is not None and v < lo:
            raise ValueError(f"{flag}: expected an integer >= {lo}, got {v}")

    if a.cmd in ("evaluate", "decode"):
        parse_device(a.device)
        bad = [t for t in a.thresholds if not math.isfinite(t) or t < 0]
        if bad:
            raise ValueError(f"--thresholds: expected finite numbers >= 0 (above 1: never exit early), got {bad[0]}")
        if a.json:
            check_writable(a.json, "--json", False)
    if a.cmd == "evaluate":
        at_least("--max-sequences", a.max_sequences, 0)
    if a.cmd == "decode":
        for flag, v, lo in (("--new-tokens", a.new_tokens, 1), ("--prompts", a.prompts, 1),
                            ("--prompt-tokens", a.prompt_tokens, 1), ("--rounds", a.rounds, 1),
                            ("--threads", a.threads, 0), ("--draft-exit", a.draft_exit, 0)):
            at_least(flag, v, lo)
        for flag, vs, lo in (("--draft-tokens", a.draft_tokens, 1), ("--check-exits", a.check_exits or [], 0)):
            for v in vs:
                at_least(flag, v, lo)
        if a.draft_tokens and max(a.draft_tokens) > a.new_tokens:
            raise ValueError(f"--draft-tokens: at most --new-tokens ({a.new_tokens}) tokens can be drafted, got "
                             f"{max(a.draft_tokens)}")
    if a.cmd in ("corpus", "export"):
        check_writable(a.out, "--out" if a.cmd == "corpus" else "out", True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msd_fast.lm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="tokenise a source (a BPE trained here, or --tokenizer's); cache it as memmaps")
    c.add_argument("--out", default=DEFAULT_CORPUS)
    c.add_argument("--source", default="python-stdlib", help="python-stdlib, a directory of text files, or a .jsonl "
                   "file of {\"text\"} or {\"prompt\", \"completion\"} rows (with --tokenizer)")
    c.add_argument("--pattern", default=None, help="files of a source directory to read (default *.py)")
    c.add_argument("--vocab-size", type=int, default=None, help="the BPE trained here (default 8192)")
    c.add_argument("--tokenizer", default=None, help="a Hugging Face model folder: tokenise with its tokenizer.json "
                   "instead of training a BPE (text_data.py)")
    for name, h in (("evaluate", "per-exit perplexity and the early-exit curve"),
                    ("decode", "early-exit greedy decoding against full depth")):
        e = sub.add_parser(name, help=h)
        e.add_argument("run", help="an LM run directory (its best.pt), checkpoint or export folder")
        e.add_argument("--data-dir", default=None, help="the corpus (default: the run's)")
        e.add_argument("--device", default="cpu")
        e.add_argument("--thresholds", type=float, nargs="*", default=list(THRESHOLDS))
        e.add_argument("--json", default=None, help="also write the results here")
    x = sub.add_parser("export", help="a Hugging Face model folder (safetensors) plus the exits")
    x.add_argument("run")
    x.add_argument("out")
    x.add_argument("--data-dir", default=None, help="the corpus whose tokenizer.json goes along (default: the run's)")
    ev = sub.choices["evaluate"]
    ev.add_argument("--split", choices=("val", "test"), default="test")
    ev.add_argument("--max-sequences", type=int, default=0, help="evaluate the first K windows (0: all)")
    d = sub.choices["decode"]
    d.add_argument("--prompt", default=None, help="a text prompt (default: --prompts prompts from the test split)")
    d.add_argument("--prompts", type=int, default=8)
    d.add_argument("--prompt-tokens", type=int, default=32)
    d.add_argument("--new-tokens", type=int, default=48)
    d.add_argument("--check-exits", type=int, nargs="*", default=None,
                   help="also decode checking only these exits' confidence (0-based; the last always emits)")
    d.add_argument("--draft-tokens", type=int, nargs="*", default=[],
                   help="also self-speculative decoding drafting K tokens at a time (speculative.py)")
    d.add_argument("--draft-exit", type=int, default=0, help="the exit that drafts (0-based, not the last)")
    d.add_argument("--rounds", type=int, default=3, help="timing rounds, settings interleaved (decode_sweep.py)")
    d.add_argument("--threads", type=int, default=0)
    return p


def main(argv=None) -> int:
    command_started()
    a = build_parser().parse_args(argv)
    try:
        check_args(a)
        res = {"corpus": cmd_corpus, "evaluate": cmd_evaluate, "decode": cmd_decode, "export": cmd_export}[a.cmd](a)
        if getattr(a, "json", None):
            pathlib.Path(a.json).write_text(json.dumps(res, indent=1))
    except (CorpusError, DataError, CheckpointError, FileNotFoundError, ValueError, TypeError, ImportError) as e:
        print(f"[msd_fast.lm] error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a result could not be written (disk full, permissions)
        print(f"[msd_fast.lm] error: could not write {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[msd_fast.lm] interrupted by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
