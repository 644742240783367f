"""Your data, your model's tokenizer: a corpus (corpus.py's format) from text files or JSON Lines, tokenised
by the tokenizer.json of a Hugging Face model folder (`python -m msd_fast.lm corpus --tokenizer FOLDER
--source SRC`).

Sources: python-stdlib or a directory of text files (`--pattern`, default *.py, as corpus.py), or a `.jsonl`
file whose rows are all `{"text": ...}` (documents) or all `{"prompt": ..., "completion": ...}` (pairs).
Each document or pair is one example: its tokens (with the tokenizer's special tokens, e.g. Llama's BOS) and
the end-of-text token; examples are joined into one stream per split, which the task cuts into packed
windows (a window may span two examples, as packed fine-tuning does without document masks). A pair is its
prompt's tokens, then its completion's (no special tokens of their own): the prompt tokens are never targets
(a loss mask, {split}.mask.bin, 1 where the token is a target), so the loss and the perplexity are the
completions' and their end-of-text tokens'. {split}.starts.bin (int64) holds where each example starts (and
the end), for padded batches: one example per row (lm_batching padded, rows.py). Examples go to train / val / test by a hash of their path (files) or content
(rows), as corpus.py splits files.

Reading runs no code: tokenizer.json is parsed by HF tokenizers, the folder's other files as JSON."""
import hashlib
import json
import pathlib
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..files import check_writable, read_json_object, sha256_of
from .corpus import META_VERSION, SPLITS, CorpusError, read_tokenizer_json, source_files, split_of
from .names import MAX_VOCAB

MAX_ROW_BYTES = 64 << 20  # the longest JSON Lines row read


def folder_tokenizer(folder) -> Tuple[object, int, pathlib.Path]:
    """(HF tokenizers Tokenizer, end-of-text id, its tokenizer.json) of a model folder. The end-of-text token is
    tokenizer_config.json's eos_token, else config.json's eos_token_id."""
    d = pathlib.Path(folder)
    f = d / "tokenizer.json"
    if not f.is_file():
        raise CorpusError(f"--tokenizer {d}: no tokenizer.json (a fast tokenizer's file; a folder with only a "
                          f"sentencepiece tokenizer.model can be converted once with transformers: "
                          f"AutoTokenizer.from_pretrained(folder).save_pretrained(folder))")
    tok = read_tokenizer_json(f)
    eos = None
    if (d / "tokenizer_config.json").is_file():
        t = read_json_object(d / "tokenizer_config.json", "the tokenizer's settings", CorpusError).get("eos_token")
        name = t.get("content") if isinstance(t, dict) else t
        eos = tok.token_to_id(name) if isinstance(name, str) else None
    if eos is None and (d / "config.json").is_file():
        e = read_json_object(d / "config.json", "the model's config", CorpusError).get("eos_token_id")
        e = e[0] if isinstance(e, list) and e else e
        eos = e if isinstance(e, int) and not isinstance(e, bool) and 0 <= e < tok.get_vocab_size() else None
    if eos is None:
        raise CorpusError(f"--tokenizer {d}: no end-of-text token (tokenizer_config.json's eos_token or "
                          f"config.json's eos_token_id) to end each example with")
    return tok, eos, f


def read_examples(source: str, pattern: Optional[str]) -> Tuple[str, List[Tuple[str, Tuple[str, ...]]]]:
    """("text" | "pairs", [(key, (text,) or (prompt, completion))]) of a directory or a .jsonl file."""
    p = pathlib.Path(source)
    if source == "python-stdlib" or p.is_dir():
        root, files = source_files(source, pattern or "*.py")
        return "text", [(f.relative_to(root).as_posix(), (f.read_bytes().decode("utf-8", errors="replace"),))
                        for f in files]
    if pattern is not None:
        raise CorpusError(f"--pattern {pattern!r}: applies to a source directory, not the file {source}")
    if not (p.is_file() and p.suffix == ".jsonl"):
        raise CorpusError(f"--source {source!r}: not 'python-stdlib', a directory nor a .jsonl file")
    kind, rows = None, []
    with open(p, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if len(line) > MAX_ROW_BYTES:
                raise CorpusError(f"{p}:{n}: a row of {len(line):,} bytes, more than {MAX_ROW_BYTES:,}")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise CorpusError(f"{p}:{n}: not a JSON object ({type(e).__name__}: {str(e)[:80]})") from None
            keys = ("text",) if isinstance(row, dict) and "text" in row else ("prompt", "completion")
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in keys):
                raise CorpusError(f'{p}:{n}: expected {{"text": str}} or {{"prompt": str, "completion": str}}, '
                                  f"got {str(row)[:80]}")
            this = "text" if keys == ("text",) else "pairs"
            if kind not in (None, this):
                raise CorpusError(f"{p}:{n}: a {this} row in a file of {kind} rows: use one kind per file")
            kind = this
            vals = tuple(row[k] for k in keys)
            rows.append((hashlib.sha1("\0".join(vals).encode()).hexdigest(), vals))
    return kind or "text", rows


def _splits(examples) -> Dict[str, list]:
    out: Dict[str, list] = {s: [] for s in SPLITS}
    for key, vals in examples:
        out[split_of(key)].append(vals)
    for s in ("val", "test"):  # a small source: the hash may leave a split empty; take the train's last example
        if not out[s] and len(out["train"]) > 1:
            out[s].append(out["train"].pop())
    if not all(out.values()):
        raise CorpusError(f"need at least 3 examples (one per split), found {len(examples)}")
    return out


def build_text_corpus(out_dir, source: str, tokenizer: str, pattern: Optional[str] = None) -> Dict:
    """Tokenises `source` with the tokenizer of the model folder `tokenizer` and writes a corpus (tokenizer.json
    copied, {split}.bin, {split}.mask.bin for pairs, meta.json last). Returns the meta dict."""
    check_writable(out_dir, "--out", True, CorpusError)
    tok, eos, tok_file = folder_tokenizer(tokenizer)
    kind, examples = read_examples(source, pattern)
    parts = _splits(examples)
    V = tok.get_vocab_size()
    if V > MAX_VOCAB:
        raise CorpusError(f"--tokenizer {tokenizer}: a vocabulary of {V:,} tokens, more than {MAX_VOCAB:,}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    shutil.copyfile(tok_file, out / "tokenizer.json")
    dtype = np.uint16 if V <= 2 ** 16 else np.uint32
    meta = {"version": META_VERSION, "source": str(source), "pattern": pattern, "vocab_size": V, "eot_id": eos,
            "dtype": np.dtype(dtype).name, "tokenizer_sha256": sha256_of(out / "tokenizer.json"),
            "tokenizer_from": str(tokenizer), "examples": kind, "loss_mask": kind == "pairs",
            "example_starts": True, "splits": {}}
    for s in SPLITS:
        ids: List[int] = []
        mask: List[int] = []
        starts: List[int] = []
        for vals in parts[s]:
            starts.append(len(ids))
            # the text (a pair: its prompt) with the tokenizer's special tokens; a completion continues its prompt
            encs = [tok.encode(vals[0])] + [tok.encode(v, add_special_tokens=False) for v in vals[1:]]
            for j, enc in enumerate(encs):
                ids.extend(enc.ids)
                mask.extend([int(kind == "text" or j == 1)] * len(enc.ids))
            ids.append(eos)
            mask.append(1)
        arr = np.asarray(ids, dtype=dtype)
        arr.tofile(out / f"{s}.bin")
        info = {"files" if kind == "text" and not source.endswith(".jsonl") else "rows": len(parts[s]),
                "tokens": int(arr.size),
                "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
        st = np.asarray(starts + [len(ids)], dtype=np.int64)  # example k is tokens [st[k], st[k + 1])
        st.tofile(out / f"{s}.starts.bin")
        info["starts_sha256"] = hashlib.sha256(st.tobytes()).hexdigest()
        if kind == "pairs":
            m = np.asarray(mask, dtype=np.uint8)
            m.tofile(out / f"{s}.mask.bin")
            info["targets"], info["mask_sha256"] = int(m.sum()), hashlib.sha256(m.tobytes()).hexdigest()
        meta["splits"][s] = info
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
