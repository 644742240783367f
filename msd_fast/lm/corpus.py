"""Real text offline: a corpus of source files tokenised by a byte-level BPE trained here (HF `tokenizers`),
cached as flat memmaps of token ids, and its reader.

The default source is the Python standard library's own sources (`python-stdlib`: the running interpreter's
stdlib directory, tests and vendored packages left out), present wherever Python is; any directory of text
files works (`--source DIR --pattern '*.txt'`, e.g. Debian's python3.11-doc reST sources). Files are split
into train / val / test by a hash of their path (5% / 5% to val / test), so no document straddles two splits;
the BPE is trained on the train files only.

A corpus directory holds tokenizer.json, {train,val,test}.bin (uint16 or uint32 token ids, the files joined
with an end-of-text token) and meta.json (vocabulary size, dtype, token counts, the source, each .bin's
sha256, and tokenizer.json's). A corpus of your own data (text_data.py: your model's tokenizer, text or JSON
Lines) may also hold {split}.mask.bin (uint8, 1 where a token is a target: prompt tokens are not).
Reading it runs no code: JSON and raw integers, checked against meta.json,
hashes included, before training or evaluation reads a token.
"""
import hashlib
import json
import pathlib
import sysconfig
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..files import MAX_JSON_BYTES, check_sha256, check_writable, is_sha256, read_json_object, sha256_of
from .names import MAX_VOCAB

SPLITS = ("train", "val", "test")
EOT = "<|endoftext|>"
META_VERSION = 3  # 2: meta.json records tokenizer.json's SHA-256; 3: optional loss masks (text_data.py)
READ_VERSIONS = (1, 2, 3)
_STDLIB_SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "turtledemo")


DEFAULT_CORPUS = "data/python-stdlib-bpe"  # where `python -m msd_fast.lm corpus` writes and the LM task reads


def windows(arr, seq_len: int, limit: int = 0) -> Tuple["torch.Tensor", int]:
    """The tokens of consecutive, non-overlapping windows of seq_len + 1 (int64) and how many there are
    (at most `limit` when > 0). torch is imported here so that building a corpus does not load it."""
    import torch
    n = (len(arr) - 1) // seq_len
    if limit:
        n = min(n, limit)
    return torch.from_numpy(arr[:n * seq_len + 1].astype("int64")), n


def masked_targets(y: "torch.Tensor", keep: Optional["torch.Tensor"]) -> "torch.Tensor":
    """Targets y with -100 (HF's ignore index) where `keep` (the loss mask of y's tokens) is 0."""
    return y if keep is None else y.masked_fill(keep == 0, -100)


def corpus_dir(data_dir: Optional[str]) -> pathlib.Path:
    return pathlib.Path(data_dir or DEFAULT_CORPUS)


class CorpusError(ValueError):
    """A corpus that cannot be built or read, with what and where."""


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def source_files(source: str, pattern: str = "*.py") -> Tuple[pathlib.Path, List[pathlib.Path]]:
    """(root, sorted files) of a source: 'python-stdlib' (the running Python's standard-library sources,
    without its tests and vendored packages) or a directory searched for `pattern`."""
    if source == "python-stdlib":
        root = stdlib_root()
        files = sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts[:-1]) & set(_STDLIB_SKIP))
    else:
        root = pathlib.Path(source)
        if not root.is_dir():
            raise CorpusError(f"source {source!r}: not 'python-stdlib' nor a directory")
        files = sorted(p for p in root.rglob(pattern) if p.is_file())
    if len(files) < 3:
        raise CorpusError(f"source {source!r}: need at least 3 files matching {pattern!r} (one per split), "
                          f"found {len(files)}")
    return root, files


def split_of(rel: str) -> str:
    """A file's split from a hash of its relative path: stable across machines and file orders."""
    h = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % 100
    return "val" if h < 5 else "test" if h < 10 else "train"


def _split_files(root: pathlib.Path, files: List[pathlib.Path]) -> Dict[str, List[pathlib.Path]]:
    out: Dict[str, List[pathlib.Path]] = {s: [] for s in SPLITS}
    for p in files:
        out[split_of(p.relative_to(root).as_posix())].append(p)
    for s in ("val", "test"):  # a small source: the hash may leave a split empty; take the train's last file
        if not out[s]:
            out[s].append(out["train"].pop())
    if not out["train"]:
        raise CorpusError("no file left for the train split")
    return out


def _read(p: pathlib.Path) -> str:
    return p.read_bytes().decode("utf-8", errors="replace")


def build_corpus(out_dir, source: str = "python-stdlib", vocab_size: int = 8192, pattern: Optional[str] = None,
                 max_files: Optional[int] = None) -> Dict:
    """Trains the BPE on the train files, writes tokenizer.json, the three .bin files and meta.json (last,
    so a half-written corpus has no meta.json and is not read). Returns the meta dict."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 256 < vocab_size <= MAX_VOCAB:
        raise CorpusError(f"vocab_size must be an integer in (256, {MAX_VOCAB}], got {vocab_size!r}")
    if source == "python-stdlib" and pattern not in (None, "*.py"):
        raise CorpusError(f"--pattern {pattern!r}: applies to a source directory; python-stdlib reads its *.py files")
    pattern = pattern or "*.py"
    check_writable(out_dir, "--out", True, CorpusError)
    root, files = source_files(source, pattern)
    parts = _split_files(root, files[:max_files] if max_files else files)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((_read(p) for p in parts["train"]), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    eot = tok.token_to_id(EOT)
    V = tok.get_vocab_size()
    dtype = np.uint16 if V <= 2 ** 16 else np.uint32
    meta = {"version": META_VERSION, "source": source, "pattern": pattern, "vocab_size": V, "eot_id": eot,
            "dtype": np.dtype(dtype).name, "tokenizer_sha256": sha256_of(out / "tokenizer.json"), "splits": {}}
    for s in SPLITS:
        ids: List[int] = []
        for enc in tok.encode_batch([_read(p) for p in parts[s]]):
            ids.extend(enc.ids)
            ids.append(eot)
        arr = np.asarray(ids, dtype=dtype)
        arr.tofile(out / f"{s}.bin")
        meta["splits"][s] = {"files": len(parts[s]), "tokens": int(arr.size),
                             "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


@dataclass
class TokenCorpus:
    """A built corpus, read: token ids per split (read-only memmaps), the vocabulary size and the directory."""
    path: pathlib.Path
    vocab_size: int
    eot_id: int
    splits: Dict[str, np.ndarray]
    meta: Dict
    masks: Optional[Dict[str, np.ndarray]] = None  # per split, uint8: 1 where the token is a target
    starts: Optional[Dict[str, np.ndarray]] = None  # per split, int64: where each example starts, then the end

    def mask(self, split: str):
        """The split's loss mask (None: every token is a target)."""
        return None if self.masks is None else self.masks[split]

    @property
    def train_sha256(self) -> str:
        """What identifies the corpus a model was trained on (checkpoints and exports record it)."""
        return self.meta["splits"]["train"]["sha256"]

    def tokenizer(self):
        """The corpus's tokenizer.json, checked: its SHA-256 against meta.json (version 2 corpora), readable
        by HF tokenizers, and of the corpus's vocabulary size."""
        f = self.path / "tokenizer.json"
        if not f.is_file():
            raise CorpusError(f"corpus {self.path}: no tokenizer.json (build the corpus again with: python -m "
                              f"msd_fast.lm corpus --out {self.path})")
        if self.meta["version"] >= 2:
            check_sha256(f, self.meta.get("tokenizer_sha256"), "meta.json's tokenizer_sha256", CorpusError)
        tok = read_tokenizer_json(f)
        if tok.get_vocab_size() != self.vocab_size:
            raise CorpusError(f"{f}: a vocabulary of {tok.get_vocab_size()} tokens, but meta.json says "
                              f"{self.vocab_size}")
        return tok


def read_tokenizer_json(f: pathlib.Path):
    """An HF tokenizers Tokenizer from a tokenizer.json, bounded in size; CorpusError naming the file."""
    from tokenizers import Tokenizer

    if f.stat().st_size > MAX_JSON_BYTES:
        raise CorpusError(f"{f}: {f.stat().st_size:,} bytes, more than a tokenizer may have")
    try:
        return Tokenizer.from_str(f.read_bytes().decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - the Rust parser's errors: one line naming the file
        raise CorpusError(f"{f}: not a readable tokenizer ({type(e).__name__}: {str(e)[:160]})") from None


def _need(cond: bool, path: pathlib.Path, what: str) -> None:
    if not cond:
        raise CorpusError(f"corpus {path}: {what}")


def check_same_corpus(corpus: TokenCorpus, trained_on: Dict, where: str) -> None:
    """The corpus is the one `where` (a checkpoint or an export) was trained on: the same vocabulary size and
    the same train split, by its SHA-256. trained_on: {"vocab_size": int, "train_sha256": str}."""
    V, sha = trained_on.get("vocab_size"), trained_on.get("train_sha256")
    if V != corpus.vocab_size:
        raise CorpusError(f"corpus {corpus.path}: a vocabulary of {corpus.vocab_size} tokens, but {where} has "
                          f"{V}: pass the corpus it was trained on (--data-dir)")
    if not is_sha256(sha):
        raise CorpusError(f"{where}: records no SHA-256 of its training corpus (got {sha!r:.80})")
    if sha != corpus.train_sha256:
        raise CorpusError(f"corpus {corpus.path}: its train split (SHA-256 {corpus.train_sha256[:12]}...) is not "
                          f"the one {where} was trained on ({sha[:12]}...): pass that corpus (--data-dir)")


def load_corpus(path, verify: bool = True) -> TokenCorpus:
    """Reads a built corpus (build_corpus, or `python -m msd_fast.lm corpus`): meta.json checked for its keys,
    types and bounds before anything is mapped, each .bin's size against its token count, its ids against the
    vocabulary and (verify, the default) its SHA-256 against meta.json."""
    p = pathlib.Path(path)
    meta_path = p / "meta.json"
    _need(meta_path.is_file(), p, "no meta.json (build it with: python -m msd_fast.lm corpus --out "
                                  f"{p})")
    meta = read_json_object(meta_path, "corpus meta.json", CorpusError)
    _need(meta.get("version") in READ_VERSIONS, p, f"meta.json is not a version-{META_VERSION} corpus description "
                                                   f"(version {meta.get('version')!r:.40})")
    V, dtype = meta.get("vocab_size"), meta.get("dtype")
    _need(dtype in ("uint16", "uint32"), p, f"meta.json dtype must be uint16 or uint32, got {dtype!r:.40}")
    top = min(MAX_VOCAB, np.iinfo(dtype).max + 1)
    _need(isinstance(V, int) and not isinstance(V, bool) and 1 < V <= top, p,
          f"meta.json vocab_size must be an integer in [2, {top}] ({dtype} ids), got {V!r:.40}")
    eot = meta.get("eot_id")
    _need(isinstance(eot, int) and not isinstance(eot, bool) and 0 <= eot < V, p,
          f"meta.json eot_id must be a token id, got {eot!r:.40}")
    _need(isinstance(meta.get("splits"), dict), p, f"meta.json splits must be an object with {', '.join(SPLITS)}")
    splits = {}
    for s in SPLITS:
        info = meta["splits"].get(s)
        _need(isinstance(info, dict) and isinstance(info.get("tokens"), int) and not isinstance(info["tokens"], bool),
              p, f"meta.json lacks split {s!r} (an object with its token count)")
        f = p / f"{s}.bin"
        n = info["tokens"]
        _need(n >= 2, p, f"split {s!r} has {n} tokens; at least 2 are needed")
        size = np.dtype(dtype).itemsize
        _need(f.is_file() and f.stat().st_size == n * size, p,
              f"{f.name} should hold {n} {dtype} token ids ({n * size} bytes), found "
              f"{f.stat().st_size if f.is_file() else 'no file'}")
        if verify:
            check_sha256(f, info.get("sha256"), f"meta.json's splits.{s}.sha256", CorpusError)
        arr = np.memmap(f, dtype=dtype, mode="r", shape=(n,))
        _need(int(arr.max()) < V, p, f"{f.name} holds token id {int(arr.max())} >= vocab_size {V}")
        splits[s] = arr
    return TokenCorpus(p, V, eot, splits, meta, _read_masks(p, meta, verify) if meta.get("loss_mask") else None,
                       _read_starts(p, meta, verify) if meta.get("example_starts") else None)


def _read_starts(p: pathlib.Path, meta: Dict, verify: bool) -> Dict[str, np.ndarray]:
    out = {}
    for s in SPLITS:
        f, n = p / f"{s}.starts.bin", meta["splits"][s]["tokens"]
        size = f.stat().st_size if f.is_file() else -1
        _need(size >= 16 and size % 8 == 0, p, f"{f.name} should hold int64 example starts, found "
                                               f"{size if size >= 0 else 'no file'} bytes")
        if verify:
            check_sha256(f, meta["splits"][s].get("starts_sha256"), f"meta.json's splits.{s}.starts_sha256",
                         CorpusError)
        st = np.fromfile(f, dtype=np.int64)
        _need(st[0] == 0 and st[-1] == n and bool((np.diff(st) > 0).all()), p,
              f"{f.name}: example starts must rise from 0 to the split's {n} tokens")
        out[s] = st
    return out


def _read_masks(p: pathlib.Path, meta: Dict, verify: bool) -> Dict[str, np.ndarray]:
    masks = {}
    for s in SPLITS:
        f, n = p / f"{s}.mask.bin", meta["splits"][s]["tokens"]
        _need(f.is_file() and f.stat().st_size == n, p, f"{f.name} should hold {n} uint8 loss-mask values, found "
                                                        f"{f.stat().st_size if f.is_file() else 'no file'} bytes")
        if verify:
            check_sha256(f, meta["splits"][s].get("mask_sha256"), f"meta.json's splits.{s}.mask_sha256", CorpusError)
        m = np.memmap(f, dtype=np.uint8, mode="r", shape=(n,))
        _need(int(m.max()) <= 1, p, f"{f.name} holds {int(m.max())}; a loss mask holds 0 and 1 only")
        _need(bool(m.any()), p, f"{f.name} marks no token as a target")
        masks[s] = m
    return masks
