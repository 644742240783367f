"""Reliability of the LM files: corpora (meta.json, the .bin files, tokenizer.json), LM checkpoints and exports,
tampered the way a user's accident or an attacker would. Each case asserts the one line a user sees, that the
integrity records written are checked on read, and that no folder we load runs code."""
import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch

from lm_helpers import tiny_corpus, write_sources


def _sha(p: pathlib.Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cfg(root, corpus, **kw):
    cfg = {"task": "lm", "dataset": "python-stdlib", "data_dir": str(corpus), "model": "llama-tiny", "width": 0.5,
           "seq_len": 16, "batch_size": 4, "epochs": 1, "optimizer": "adamw", "lr": 3e-3, "amp": "none",
           "compile": False, "out_dir": str(root / "runs"), "progress": False, "tensorboard": False,
           "eval_batch_size": 8, "val_size": 2, "exit_layers": [1, 4], "max_steps": 1, "run_name": "run"}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A corpus, a one-step LM run on it and its export; a second corpus of the same vocabulary size."""
    from msd_fast import Trainer
    from msd_fast.lm.export import export_lm

    root = tmp_path_factory.mktemp("lmrel")
    corpus = tiny_corpus(root)
    Trainer(_cfg(root, corpus)).fit()
    run = root / "runs" / "run"
    export_lm(run, root / "export")
    from msd_fast.lm.corpus import build_corpus

    src = write_sources(root / "src2", 9)
    for f in src.iterdir():
        f.write_text(f.read_text().replace("return", "yield"))
    build_corpus(root / "corpus2", str(src), 300)
    return {"root": root, "corpus": corpus, "run": run, "export": root / "export", "corpus2": root / "corpus2"}


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _lm_cli(argv, capsys):
    from msd_fast.lm.cli import main

    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    return rc, err


# ------------------------------------------------------------------------------------------------ corpora
@pytest.mark.parametrize("damage,message", [
    ("splits_list", "splits must be an object"), ("vocab_huge", "vocab_size must be an integer in"),
    ("deep", "nested too deeply"), ("train_edit", "its SHA-256 does not match"),
    ("no_sha", "has no SHA-256 for it"), ("not_json", "not a readable corpus meta.json")])
def test_damaged_corpus_files_are_refused_in_one_line(lm, tmp_path, damage, message):
    from msd_fast.lm.corpus import CorpusError, load_corpus

    c = _copy(lm["corpus"], tmp_path / "c")
    meta = json.loads((c / "meta.json").read_text())
    if damage == "splits_list":
        meta["splits"] = list(meta["splits"].values())
    elif damage == "vocab_huge":
        meta["vocab_size"] = 10 ** 10
    elif damage == "no_sha":
        del meta["splits"]["val"]["sha256"]
    elif damage == "train_edit":  # same size, other ids: only the hash can tell
        ids = np.fromfile(c / "train.bin", dtype=np.uint16)
        ids[:50] = ids[50:100]
        ids.tofile(c / "train.bin")
    (c / "meta.json").write_text("[" * 200_000 + "]" * 200_000 if damage == "deep" else
                                 "{not json" if damage == "not_json" else json.dumps(meta))
    with pytest.raises(CorpusError, match=message):
        load_corpus(c)


@pytest.mark.parametrize("damage,message", [("missing", "no tokenizer.json"), ("garbage", "not a readable tokenizer"),
                                            ("edited", "its SHA-256 does not match"),
                                            ("vocab", "a vocabulary of 260 tokens, but meta.json says")])
def test_tokenizer_json_is_checked_before_use(lm, tmp_path, damage, message):
    from tokenizers import Tokenizer

    from msd_fast.lm.corpus import CorpusError, load_corpus

    c = _copy(lm["corpus"], tmp_path / "c")
    tok = c / "tokenizer.json"
    meta = json.loads((c / "meta.json").read_text())
    if damage == "missing":
        tok.unlink()
    elif damage == "edited":
        tok.write_text(tok.read_text().replace('"<|endoftext|>"', '"<|endoftexx|>"'))
    else:  # a record that matches: the content itself is what is refused
        if damage == "garbage":
            tok.write_text("{\"model\": 12")
        else:
            from tokenizers import models

            small = Tokenizer(models.BPE())
            small.add_tokens([f"t{i}" for i in range(260)])
            small.save(str(tok))
        meta["tokenizer_sha256"] = _sha(tok)
        (c / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CorpusError, match=message):
        load_corpus(c).tokenizer()


def test_corpus_out_on_a_file_and_pattern_for_the_stdlib_are_refused(lm, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "under"):
        rc, err = _lm_cli(["corpus", "--out", out, "--source", lm["root"] / "src", "--vocab-size", 300], capsys)
        assert rc == 2 and "--out" in err and str(f) in err
    rc, err = _lm_cli(["corpus", "--out", tmp_path / "c", "--pattern", "*.txt"], capsys)
    assert rc == 2 and "--pattern '*.txt': applies to a source directory" in err and not (tmp_path / "c").exists()


# --------------------------------------------------------------------------------------------- checkpoints
def _tamper(run: pathlib.Path, out: pathlib.Path, edit) -> pathlib.Path:
    from msd_fast.checkpoint import atomic_save

    out.mkdir(parents=True, exist_ok=True)
    ck = torch.load(run / "last.pt", weights_only=True)
    edit(ck)
    atomic_save(ck, out / "last.pt")
    return out


@pytest.mark.parametrize("name,edit,message", [
    ("no_seq_len", lambda c: c["lm"].pop("seq_len"), "missing keys \\['seq_len'\\]"),
    ("seq_len_huge", lambda c: c["lm"].update(seq_len=10 ** 9), "seq_len must be in \\[2, 1048576\\]"),
    ("vocab_huge", lambda c: c.update(num_classes=10 ** 9), "a vocabulary must be an integer in"),
    ("wide", lambda c: c.update(width=64), "its weights do not fit a llama-tiny of width 64"),
    ("vocab_other", lambda c: c.update(num_classes=400), "has shape \\[300, 64\\], expected shape \\[400, 64\\]"),
    ("layers_str", lambda c: c["lm"].update(exit_layers=["1", "4", "7"]), "exit_layers must be increasing"),
    ("nan", lambda c: c["model"]["lm.model.norm.weight"].fill_(float("nan")), "holds NaN or infinite values")])
def test_tampered_lm_checkpoints_are_refused_before_allocating(lm, tmp_path, capsys, name, edit, message):
    from msd_fast.checkpoint import CheckpointError
    from msd_fast.lm.load import load_lm

    run = _tamper(lm["run"], tmp_path / name, edit)
    with pytest.raises(CheckpointError, match=message):
        load_lm(run)
    rc, err = _lm_cli(["export", run, tmp_path / "out"], capsys)  # exports refuse them too (NaN included)
    assert rc == 2 and str(run / "last.pt") in err and not (tmp_path / "out").exists()


def test_resume_refuses_another_corpus_and_a_config_its_weights_do_not_fit(lm, tmp_path, capsys):
    from msd_fast.train import main

    run = _copy(lm["run"], tmp_path / "run")
    assert main(["--resume", str(run), "--data-dir", str(lm["corpus2"]), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "its corpus's train split" in err and "--data-dir" in err and len(err.strip().splitlines()) == 1

    def wide(c):
        c["config"]["width"], c["width"] = 64.0, 64.0
    bad = _tamper(run, tmp_path / "wide", wide)
    assert main(["--resume", str(bad), "--max-steps", "2"]) == 2  # a 64x wider model is not allocated first
    err = capsys.readouterr().err
    assert "its weights do not fit the model this run's config describes" in err and len(err.strip().splitlines()) == 1


def test_evaluate_and_decode_refuse_a_corpus_the_model_was_not_trained_on(lm, tmp_path, capsys):
    for cmd in ("evaluate", "decode"):
        rc, err = _lm_cli([cmd, lm["run"], "--data-dir", lm["corpus2"], "--max-sequences" if cmd == "evaluate"
                           else "--prompts", 1], capsys)
        assert rc == 2 and "is not the one" in err and "was trained on" in err
    big = tiny_corpus(tmp_path, vocab_size=400)
    rc, err = _lm_cli(["decode", lm["export"], "--data-dir", big, "--prompt", "def f():"], capsys)
    assert rc == 2 and "a vocabulary of" in err and "has 300: pass the corpus it was trained on" in err


# ------------------------------------------------------------------------------------------------ exports
def _edit_export(lm, tmp_path, edit) -> pathlib.Path:
    """A copy of the export with `edit(folder, meta)` applied; meta (exits.json) is written back after."""
    d = _copy(lm["export"], tmp_path / "export")
    meta = json.loads((d / "exits.json").read_text())
    edit(d, meta)
    (d / "exits.json").write_text(json.dumps(meta))
    return d


def _resign(d: pathlib.Path, meta: dict, rel: str) -> None:  # an attacker updates the record too
    meta["sha256"][rel] = _sha(d / rel)


def _config_edit(**changes):
    def edit(d, meta):
        cfg = json.loads((d / "hf/config.json").read_text())
        cfg.update(changes)
        (d / "hf/config.json").write_text(json.dumps(cfg))
        _resign(d, meta, "hf/config.json")
    return edit


def _weights_edit(change):
    def edit(d, meta):
        from safetensors.torch import load_file, save_file

        state = load_file(str(d / "hf/model.safetensors"))
        change(state)
        save_file(state, str(d / "hf/model.safetensors"))
        _resign(d, meta, "hf/model.safetensors")
    return edit


def _flip_byte(d, meta):
    raw = bytearray((d / "hf/model.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0x40
    (d / "hf/model.safetensors").write_bytes(bytes(raw))


def _only_bin(d, meta):
    (d / "hf/model.safetensors").rename(d / "hf/pytorch_model.bin")
    del meta["sha256"]["hf/model.safetensors"]


def _drop_layer(state):
    for k in [k for k in state if ".layers.3." in k]:
        del state[k]


EXPORT_CASES = [
    ("auto_map", _config_edit(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilLM"}, model_type="evil"),
     "has an auto_map"),
    ("model_type", _config_edit(model_type="evil"), "model_type 'evil' is not one of llama, qwen2, gpt2"),
    ("config_not_json", lambda d, m: ((d / "hf/config.json").write_text("{oops"), _resign(d, m, "hf/config.json")),
     "not a readable Hugging Face config.json"),
    ("layer_missing", _weights_edit(_drop_layer), "missing 9 tensors"),
    ("shape", _weights_edit(lambda s: s.update({"lm_head.weight": torch.zeros(300, 32)})),
     "'lm_head.weight' has shape \\[300, 32\\], expected shape \\[300, 64\\]"),
    ("nan", _weights_edit(lambda s: s["model.norm.weight"].fill_(float("nan"))), "holds NaN or infinite values"),
    ("bad_safetensors", lambda d, m: ((d / "hf/model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}garbage"),
                                      _resign(d, m, "hf/model.safetensors")), "not a readable safetensors file"),
    ("flipped", _flip_byte, "its SHA-256 does not match"),
    ("sha_emptied", lambda d, m: m.update(sha256={}), "has no SHA-256 for it"),
    ("sha_removed", lambda d, m: (m.pop("sha256"), _flip_byte(d, m)), "missing keys \\['sha256'\\]"),
    ("only_bin", _only_bin, "model.safetensors: missing; msd_fast reads LM weights from safetensors only"),
    ("no_exit_layers", lambda d, m: m.pop("exit_layers"), "missing keys \\['exit_layers'\\]"),
    ("per_exit_heads_missing", lambda d, m: m.update(heads="per_exit"), "exit_heads.safetensors: missing"),
    ("version_1", lambda d, m: m.update(format_version=1), "export the run again"),
]


@pytest.mark.parametrize("name,edit,message", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_tampered_exports_are_refused_and_run_no_code(lm, tmp_path, capsys, name, edit, message):
    from msd_fast.lm.load import load_lm

    d = _edit_export(lm, tmp_path, edit)
    (d / "hf" / "modeling_evil.py").write_text("import pathlib; pathlib.Path('RAN').write_text('code ran')\n")
    with pytest.raises(ValueError, match=message):
        load_lm(d)
    rc, err = _lm_cli(["evaluate", d, "--data-dir", lm["corpus"], "--max-sequences", 1], capsys)
    assert rc == 2 and str(d) in err
    assert not pathlib.Path("RAN").exists() and not (d / "hf" / "RAN").exists()


def test_an_intact_export_round_trips_and_names_its_corpus(lm, tmp_path, capsys):
    from msd_fast.lm.load import load_lm

    model, rec = load_lm(lm["export"])
    ref, ref_rec = load_lm(lm["run"])
    assert rec["trained_on"] == ref_rec["trained_on"] and rec["lm"]["exit_layers"] == [1, 4, 7]
    x = torch.randint(0, 300, (1, 8))
    torch.testing.assert_close(model.logits(model(x), 0), ref.logits(ref(x), 0))
    d = _copy(lm["export"], tmp_path / "e")
    (d / "exits.json").unlink()
    rc, err = _lm_cli(["evaluate", d], capsys)
    assert rc == 2 and "not an LM run or export (no best.pt, last.pt or exits.json" in err
    (d / "exits.json").write_text("[" * 200_000)
    rc, err = _lm_cli(["evaluate", d], capsys)
    assert rc == 2 and "nested too deeply" in err
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = _lm_cli(["export", lm["run"], f / "sub"], capsys)
    assert rc == 2 and "is a file, not a directory" in err


def test_per_exit_heads_of_an_export_are_checked(lm, tmp_path):
    from safetensors.torch import load_file, save_file

    from msd_fast import Trainer
    from msd_fast.lm.export import export_lm
    from msd_fast.lm.load import load_lm

    Trainer(_cfg(tmp_path, lm["corpus"], lm_heads="per_exit")).fit()
    d = pathlib.Path(export_lm(tmp_path / "runs" / "run", tmp_path / "e")["dir"])
    model, _ = load_lm(d)
    ref, _ = load_lm(tmp_path / "runs" / "run")
    torch.testing.assert_close(model.exit_heads[1], ref.exit_heads[1])
    meta = json.loads((d / "exits.json").read_text())
    heads = load_file(str(d / "exit_heads.safetensors"))
    for change, message in ((lambda h: h.update(exit_1=h["exit_1"][:, :8].contiguous()), "'exit_1' has shape"),
                            (lambda h: h.pop("exit_0"), "missing 1 tensors \\(exit_0\\)"),
                            (lambda h: h["exit_0"].fill_(float("inf")), "'exit_0' holds NaN or infinite")):
        bad = {k: v.clone() for k, v in heads.items()}
        change(bad)
        save_file(bad, str(d / "exit_heads.safetensors"))
        _resign(d, meta, "exit_heads.safetensors")
        (d / "exits.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=message):
            load_lm(d)
