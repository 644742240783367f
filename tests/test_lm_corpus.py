"""The offline corpus: a BPE trained here on files the test writes, memmaps of token ids, a split by file
that does not depend on the file order, and a reader that checks what it reads."""
import json

import numpy as np
import pytest

from lm_helpers import tiny_corpus, write_sources


def test_build_and_read_round_trip(tmp_path):
    from msd_fast.lm.corpus import load_corpus

    path = tiny_corpus(tmp_path)
    c = load_corpus(path, verify=True)
    meta = json.loads((path / "meta.json").read_text())
    assert c.vocab_size == meta["vocab_size"] <= 300 and c.splits["train"].dtype == np.uint16
    assert sum(meta["splits"][s]["files"] for s in ("train", "val", "test")) == 12
    assert all(meta["splits"][s]["files"] >= 1 for s in ("train", "val", "test"))
    text = c.tokenizer().decode(c.splits["train"][:40].tolist())
    assert "def add" in text and int(c.splits["train"].max()) < c.vocab_size
    assert (c.splits["train"] == c.eot_id).sum() == meta["splits"]["train"]["files"]  # one end-of-text per file


def test_split_is_by_path_not_by_order():
    from msd_fast.lm.corpus import split_of

    names = [f"pkg/mod_{i}.py" for i in range(400)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in reversed(names)][::-1]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.8 < share["train"] < 0.97 and share["val"] > 0.01 and share["test"] > 0.01


def test_reader_refuses_damaged_corpora(tmp_path):
    from msd_fast.lm.corpus import CorpusError, load_corpus

    path = tiny_corpus(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    with pytest.raises(CorpusError, match="no meta.json"):
        load_corpus(tmp_path / "nowhere")
    (path / "val.bin").write_bytes((path / "val.bin").read_bytes()[:-2])
    with pytest.raises(CorpusError, match="val.bin should hold"):
        load_corpus(path)
    (path / "val.bin").write_bytes(b"\0\0" * meta["splits"]["val"]["tokens"])
    with pytest.raises(CorpusError, match="val.bin: its SHA-256 does not match meta.json"):
        load_corpus(path)
    ids = np.fromfile(path / "test.bin", dtype=np.uint16)
    ids[0] = meta["vocab_size"] + 5
    ids.tofile(path / "test.bin")
    with pytest.raises(CorpusError, match="holds token id"):
        load_corpus(path, verify=False)
    (path / "meta.json").write_text(json.dumps({**meta, "dtype": "float32"}))
    with pytest.raises(CorpusError, match="dtype must be"):
        load_corpus(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CorpusError, match="not a readable corpus meta.json"):
        load_corpus(path)


def test_sources_need_files_and_a_sane_vocabulary(tmp_path):
    from msd_fast.lm.corpus import CorpusError, build_corpus, source_files

    root, files = source_files("python-stdlib")
    assert len(files) > 100 and not any("test" in f.relative_to(root).parts[:-1] for f in files)
    with pytest.raises(CorpusError, match="at least 3 files"):
        build_corpus(tmp_path / "c", str(write_sources(tmp_path / "two", 2)), 300)
    with pytest.raises(CorpusError, match="vocab_size"):
        build_corpus(tmp_path / "c", str(write_sources(tmp_path / "src")), 100)
