"""`python -m msd_fast.lm`: the language-model commands besides training (python -m msd_fast.train -c
lm_stdlib_cpu trains).

    python -m msd_fast.lm corpus [--out data/python-stdlib-bpe] [--source python-stdlib|DIR] [--vocab-size 8192]
    python -m msd_fast.lm evaluate RUN [--split test] [--max-sequences K] [--json FILE]
    python -m msd_fast.lm decode RUN [--prompt TEXT | --prompts K] [--new-tokens 64] [--thresholds ...] [--json FILE]
    python -m msd_fast.lm export RUN OUT       # a Hugging Face model folder + the exits (export.py)

evaluate: per-exit perplexity and the early-exit curve (teacher-forced); decode: early-exit greedy decoding
(decode.py) at each threshold against full-depth decoding: tokens/s, agreement, layers used.
Exit status: 0 done, 2 bad arguments, corpus or checkpoint (one line on stderr)."""
import argparse
import json
import pathlib
import statistics
import sys
from typing import List, Optional

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


def decode_prompts(corpus, k: int, length: int, split: str = "test") -> List[List[int]]:
    """k prompts of `length` tokens, evenly spaced through a corpus split."""
    arr = corpus.splits[split]
    step = max(1, (len(arr) - length) // k)
    return [arr[i * step:i * step + length].astype("int64").tolist() for i in range(k)]


def decode_sweep(model, prompts: List[List[int]], new_tokens: int, thresholds) -> List[dict]:
    """Per threshold: tokens/s (median over prompts), agreement (%) with full-depth greedy decoding position by
    position, the share of outputs identical to it, average layers used per token."""
    from .decode import early_exit_generate

    early_exit_generate(model, prompts[0], min(new_tokens, 8), 2.0)  # warm-up, not timed
    full = [early_exit_generate(model, p, new_tokens, 2.0) for p in prompts]
    rows = []
    for t in [2.0] + [t for t in thresholds if t <= 1.0]:
        runs = full if t == 2.0 else [early_exit_generate(model, p, new_tokens, t) for p in prompts]
        same = [sum(a == b for a, b in zip(r.tokens, f.tokens)) / max(1, len(f.tokens)) for r, f in zip(runs, full)]
        used = [u for r in runs for u in r.layers_used]
        rows.append({"threshold": t if t <= 1.0 else None,
                     "tokens_per_s": statistics.median(len(r.tokens) / r.seconds for r in runs),
                     "agreement": 100.0 * statistics.mean(same),
                     "identical": 100.0 * statistics.mean(float(r.tokens == f.tokens) for r, f in zip(runs, full)),
                     "avg_layers": statistics.mean(used) if used else float(model.num_layers),
                     "layer_rows_per_token": statistics.mean(r.layer_rows / max(1, len(r.tokens)) for r in runs)})
    return rows


def cmd_export(a) -> dict:
    from .export import export_lm

    res = export_lm(a.run, a.out, a.data_dir)
    print(f"[msd_fast.lm] exported {a.run} to {a.out} (hf/, exits.json)")
    return res


def cmd_decode(a) -> dict:
    model, ckpt = load_lm(a.run, a.device)
    corpus = _corpus_of(ckpt, a.data_dir)
    tok = corpus.tokenizer()
    prompts = [tok.encode(a.prompt).ids] if a.prompt else decode_prompts(corpus, a.prompts, a.prompt_tokens)
    if not all(prompts):
        raise ValueError("--prompt: the text encodes to no tokens")
    torch.set_num_threads(a.threads) if a.threads else None
    rows = decode_sweep(model, prompts, a.new_tokens, a.thresholds)
    print("| threshold | tokens/s | agreement with full depth (%) | identical outputs (%) | avg layers |\n"
          "|---|---|---|---|---|")
    for r in rows:
        th = "full depth" if r["threshold"] is None else f"{r['threshold']:.2f}"
        print(f"| {th} | {r['tokens_per_s']:.1f} | {r['agreement']:.1f} | {r['identical']:.0f} | "
              f"{r['avg_layers']:.2f} |")
    if a.prompt:
        from .decode import early_exit_generate

        g = early_exit_generate(model, prompts[0], a.new_tokens, a.thresholds[-1] if a.thresholds else 0.9)
        print(tok.decode(prompts[0] + g.tokens))
    return {"run": str(a.run), "prompts": len(prompts), "new_tokens": a.new_tokens, "device": a.device,
            "threads": torch.get_num_threads(), "rows": rows}


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
