"""`python -m msd_fast.lm`: the language-model commands besides training (python -m msd_fast.train -c
lm_stdlib_cpu trains).

    python -m msd_fast.lm corpus [--out data/python-stdlib-bpe] [--source python-stdlib|DIR] [--vocab-size 8192]
    python -m msd_fast.lm evaluate RUN [--split test] [--max-sequences K] [--json FILE]
    python -m msd_fast.lm decode RUN [--prompt TEXT | --prompts K] [--new-tokens 48] [--rounds 3] [--thresholds ...]
                                     [--check-exits K ...] [--draft-tokens K ...] [--draft-exit N] [--json FILE]
    python -m msd_fast.lm export RUN OUT       # a Hugging Face model folder + the exits (export.py)

evaluate: per-exit perplexity and the early-exit curve (teacher-forced); decode: early-exit greedy decoding
(decode.py) at each threshold, and self-speculative decoding (speculative.py), against full-depth decoding,
interleaved in rounds (decode_sweep.py): tokens/s and its ratio to full depth, agreement, layers used, layer
calls, head checks and weights read per token.
Exit status: 0 done, 2 bad arguments, corpus or checkpoint (one line on stderr)."""
import argparse
import json
import pathlib
import sys
from typing import Optional

import torch

from ..checkpoint import CheckpointError
from ..data import DataError
from .corpus import CorpusError, build_corpus, load_corpus
from .evaluate import THRESHOLDS, evaluate_lm, load_lm
from .task import DEFAULT_CORPUS, corpus_dir


def _corpus_of(ckpt, data_dir: Optional[str]):
    return load_corpus(corpus_dir(data_dir or ckpt["config"].get("data_dir")))


def cmd_corpus(a) -> dict:
    meta = build_corpus(a.out, a.source, a.vocab_size, a.pattern)
    s = meta["splits"]
    print(f"[msd_fast.lm] corpus {a.out}: vocabulary {meta['vocab_size']}, tokens train {s['train']['tokens']:,} "
          f"/ val {s['val']['tokens']:,} / test {s['test']['tokens']:,} (files {s['train']['files']} / "
          f"{s['val']['files']} / {s['test']['files']})")
    return meta


def cmd_evaluate(a) -> dict:
    model, ckpt = load_lm(a.run, a.device)
    corpus = _corpus_of(ckpt, a.data_dir)
    T = ckpt["lm"]["seq_len"]
    res = evaluate_lm(model, corpus.splits[a.split], T, 64, torch.device(a.device), limit=a.max_sequences,
                      thresholds=a.thresholds)
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
    from .decode_sweep import decode_prompts, decode_sweep, setting_label

    model, ckpt = load_lm(a.run, a.device)
    corpus = _corpus_of(ckpt, a.data_dir)
    tok = corpus.tokenizer()
    prompts = [tok.encode(a.prompt).ids] if a.prompt else decode_prompts(corpus, a.prompts, a.prompt_tokens)
    if not all(prompts):
        raise ValueError("--prompt: the text encodes to no tokens")
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
    if a.prompt:
        from .decode import early_exit_generate

        g = early_exit_generate(model, prompts[0], a.new_tokens, a.thresholds[-1] if a.thresholds else 0.9)
        print(tok.decode(prompts[0] + g.tokens))
    return {"run": str(a.run), "prompts": len(prompts), "new_tokens": a.new_tokens, "rounds": a.rounds,
            "device": a.device, "threads": torch.get_num_threads(), "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msd_fast.lm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="tokenise a source with a BPE trained here; cache it as memmaps")
    c.add_argument("--out", default=DEFAULT_CORPUS)
    c.add_argument("--source", default="python-stdlib", help="python-stdlib or a directory of text files")
    c.add_argument("--pattern", default="*.py", help="files of a source directory to read")
    c.add_argument("--vocab-size", type=int, default=8192)
    for name, h in (("evaluate", "per-exit perplexity and the early-exit curve"),
                    ("decode", "early-exit greedy decoding against full depth")):
        e = sub.add_parser(name, help=h)
        e.add_argument("run", help="an LM run directory (its best.pt) or checkpoint")
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
    a = build_parser().parse_args(argv)
    try:
        res = {"corpus": cmd_corpus, "evaluate": cmd_evaluate, "decode": cmd_decode, "export": cmd_export}[a.cmd](a)
    except (CorpusError, DataError, CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"[msd_fast.lm] error: {e}", file=sys.stderr)
        return 2
    if getattr(a, "json", None):
        pathlib.Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
