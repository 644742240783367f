"""Your model and your data: a small Llama saved as a Hugging Face folder with its own tokenizer, JSON Lines
prompt/completion pairs and text tokenised by that tokenizer (prompt tokens are no targets), trained with exits
from the CLI, reloaded with its exits and in plain transformers, decoded; the step's gradient is the mean over
every kept token whatever the accumulation."""
import json
import pathlib

import numpy as np
import pytest
import torch

from lm_helpers import TEXT, need_transformers

PAIRS = [("def add_%d(a, b):" % i, "\n    return a + b + %d\n" % i) for i in range(40)]


def _tokenizer_files(folder: pathlib.Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 4 + [p + c for p, c in PAIRS], trainer=trainer)
    from tokenizers.processors import TemplateProcessing
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    tf = need_transformers()
    d = tmp_path_factory.mktemp("llama") / "model"
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)  # <s>, </s> below
    tf.LlamaForCausalLM(cfg).save_pretrained(d)
    _tokenizer_files(d)
    return d


@pytest.fixture(scope="module")
def pairs_corpus(llama_folder, tmp_path_factory):
    from msd_fast.lm.cli import main as lm_main

    root = tmp_path_factory.mktemp("pairs")
    src = root / "pairs.jsonl"
    src.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    assert lm_main(["corpus", "--tokenizer", str(llama_folder), "--source", str(src), "--out",
                    str(root / "corpus")]) == 0
    return root / "corpus"


def test_pairs_corpus_masks_the_prompts_and_text_corpus_masks_nothing(llama_folder, pairs_corpus, tmp_path):
    from tokenizers import Tokenizer

    from msd_fast.lm.corpus import load_corpus
    from msd_fast.lm.text_data import build_text_corpus

    c = load_corpus(pairs_corpus)
    tok = Tokenizer.from_file(str(llama_folder / "tokenizer.json"))
    eos, bos = tok.token_to_id("</s>"), tok.token_to_id("<s>")
    assert c.vocab_size == tok.get_vocab_size() and c.eot_id == eos and c.meta["examples"] == "pairs"
    ids, m = np.asarray(c.splits["train"]), np.asarray(c.mask("train"))
    first = PAIRS[[i for i, (p, q) in enumerate(PAIRS)
                   if tok.encode(p).ids == list(ids[:len(tok.encode(p).ids)])][0]]
    p_ids, c_ids = tok.encode(first[0]).ids, tok.encode(first[1], add_special_tokens=False).ids
    n = len(p_ids) + len(c_ids) + 1
    assert p_ids[0] == bos and list(ids[:n]) == p_ids + c_ids + [eos]
    assert list(m[:n]) == [0] * len(p_ids) + [1] * (len(c_ids) + 1)
    assert sum(c.meta["splits"][s]["rows"] for s in ("train", "val", "test")) == len(PAIRS)
    src = tmp_path / "docs"
    src.mkdir()
    for i in range(5):
        (src / f"d{i}.txt").write_text(TEXT * (i + 1))
    meta = build_text_corpus(tmp_path / "text", str(src), str(llama_folder), "*.txt")
    assert not meta["loss_mask"] and load_corpus(tmp_path / "text").mask("train") is None
    assert not (tmp_path / "text" / "train.mask.bin").exists()


@pytest.mark.parametrize("rows, err", [
    (['{"text": "a"}', '{"prompt": "b", "completion": "c"}'], "a pairs row in a file of text rows"),
    (['{"prompt": "b"}'], 'expected {"text": str} or {"prompt": str, "completion": str}'),
    (["[1, 2]"], "expected"),
    (["{not json"], "not a JSON object"),
    (['{"text": "a"}'] * 2, "need at least 3 examples"),
])
def test_bad_jsonl_gets_one_line_naming_the_row(llama_folder, tmp_path, capsys, rows, err):
    from msd_fast.lm.cli import main as lm_main

    src = tmp_path / "x.jsonl"
    src.write_text("\n".join(rows) + "\n")
    assert lm_main(["corpus", "--tokenizer", str(llama_folder), "--source", str(src), "--out",
                    str(tmp_path / "c")]) == 2
    assert err in capsys.readouterr().err


def test_a_folder_without_tokenizer_or_eos_is_refused(llama_folder, tmp_path, capsys):
    from msd_fast.lm.cli import main as lm_main

    src = tmp_path / "x.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in "abcdef"))
    bare = tmp_path / "bare"
    bare.mkdir()
    assert lm_main(["corpus", "--tokenizer", str(bare), "--source", str(src), "--out", str(tmp_path / "c")]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
    (bare / "tokenizer.json").write_bytes((llama_folder / "tokenizer.json").read_bytes())
    assert lm_main(["corpus", "--tokenizer", str(bare), "--source", str(src), "--out", str(tmp_path / "c")]) == 2
    assert "no end-of-text token" in capsys.readouterr().err
    assert lm_main(["corpus", "--tokenizer", str(llama_folder), "--source", str(src), "--vocab-size", "500",
                    "--out", str(tmp_path / "c")]) == 2
    assert "--vocab-size 500: the vocabulary is --tokenizer's" in capsys.readouterr().err


def test_cli_trains_a_pretrained_folder_on_pairs_then_reloads_and_decodes(llama_folder, pairs_corpus, tmp_path,
                                                                          capsys):
    tf = need_transformers()
    from msd_fast.lm.load import load_lm
    from msd_fast.lm.cli import main as lm_main
    from msd_fast.lm.evaluate import evaluate_lm
    from msd_fast.lm.corpus import load_corpus
    from msd_fast.lm.rows import split_rows
    from msd_fast.train.cli import main as train_main

    argv = ["-c", "lm_stdlib_cpu", "--model", str(llama_folder), "--dataset", "text", "--data-dir", str(pairs_corpus),
            "--train-subset", "0", "--seq-len", "24", "--batch-size", "4", "--epochs", "2", "--optimizer", "adamw",
            "--lr", "3e-3",
            "--weight-decay", "0", "--amp", "none", "--compile", "false", "--exit-layers", "1", "--val-size", "4",
            "--eval-batch-size", "4", "--out-dir", str(tmp_path / "runs"), "--run-name", "ft", "--no-progress",
            "--tensorboard", "false"]
    base = tf.LlamaForCausalLM.from_pretrained(llama_folder)
    assert train_main(argv) == 0
    run = tmp_path / "runs" / "ft"
    res = json.loads((run / "results.json").read_text())
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert len(res["last"]["val_ppl"]) == 2 and all(np.isfinite(res["last"]["val_ppl"]))
    model, rec = load_lm(run)  # the checkpoint rebuilds the folder's model from its recorded config
    assert list(model.exit_layers) == [1, 3] and rec["lm"]["hf_config"]["model_type"] == "llama"
    corpus = load_corpus(pairs_corpus)
    ev = evaluate_lm(model, split_rows(corpus, "val", 24, "packed", torch.device("cpu"), 4), 4, torch.device("cpu"))
    assert ev["tokens"] < 4 * 24  # prompt tokens are not scored
    torch.testing.assert_close(torch.tensor(ev["exits"]), torch.tensor(res["last"]["val_ppl"]), rtol=1e-4, atol=0)
    changed = any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), model.lm.state_dict().values()))
    assert changed
    assert lm_main(["export", str(run), str(tmp_path / "export")]) == 0
    plain = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "hf")
    tok = tf.AutoTokenizer.from_pretrained(tmp_path / "export" / "hf")
    assert tok.eos_token == "</s>" and plain.config.eos_token_id == corpus.eot_id
    assert tok(PAIRS[0][0])["input_ids"] == corpus.tokenizer().encode(PAIRS[0][0]).ids
    ids = torch.from_numpy(corpus.splits["test"][:10].astype("int64"))[None]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model.logits(model(ids), -1))
    assert lm_main(["decode", str(run), "--prompt", PAIRS[0][0], "--new-tokens", "4", "--rounds", "1",
                    "--thresholds", "0.0", "--json", str(tmp_path / "d.json")]) == 0
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert rows[0]["agreement"] == 100.0 and rows[0]["tokens_per_s"] > 0


def test_a_corpus_of_another_tokenizer_or_a_bad_width_is_refused(llama_folder, tmp_path, capsys):
    from lm_helpers import tiny_corpus
    from msd_fast.train.cli import main as train_main

    other = tiny_corpus(tmp_path)
    argv = ["-c", "lm_stdlib_cpu", "--model", str(llama_folder), "--dataset", "text", "--data-dir", str(other),
            "--seq-len", "16", "--batch-size", "4", "--max-steps", "1", "--out-dir", str(tmp_path / "runs"),
            "--no-progress", "--tensorboard", "false", "--compile", "false", "--amp", "none"]
    assert train_main(argv) == 2
    assert "was not tokenised by" in capsys.readouterr().err
    assert train_main(argv[:4] + ["--dataset", "text", "--max-steps", "1"]) == 2
    assert "is a corpus of your own: name it with data_dir" in capsys.readouterr().err
    assert train_main(["-c", "lm_stdlib_cpu", "--model", str(tmp_path), "--max-steps", "1"]) == 2
    assert "or a Hugging Face model folder" in capsys.readouterr().err
    assert train_main(argv + ["--width", "0.5"]) == 2
    assert "width 0.5 (from flag --width): a Hugging Face model folder has its own size" in capsys.readouterr().err


def test_the_step_weighs_every_kept_token_the_same_whatever_the_accumulation(llama_folder, pairs_corpus, tmp_path):
    """One SGD step (lr 1) on a batch whose two micro-batches keep different numbers of tokens: accum 2 moves the
    weights as accum 1 does; the old per-micro-batch mean (loss / accum) would not."""
    from msd_fast import Trainer

    after, kept = [], None
    for accum in (1, 2):
        cfg = {"task": "lm", "model": str(llama_folder), "dataset": "text", "data_dir": str(pairs_corpus),
               "seq_len": 24, "batch_size": 4, "accum_steps": accum, "epochs": 1, "max_steps": 1, "optimizer": "sgd",
               "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 0, "amp": "none", "compile": False,
               "exit_layers": [1], "out_dir": str(tmp_path / "runs"), "run_name": f"a{accum}", "progress": False,
               "tensorboard": False, "val_size": 2, "eval_batch_size": 2}
        t = Trainer(cfg)
        b = t.task.batches
        perm, gen = b.epoch_order(t.cfg.seed, 0)
        _, y = b.make(*b.draw(perm, 0, gen))
        kept = [int((y[j::2] != -100).sum()) for j in range(2)]
        before = [p.detach().clone() for p in t.task.model.parameters()]
        t.fit()
        after.append([p.detach() - q for p, q in zip(t.task.model.parameters(), before)])
    assert kept[0] != kept[1], f"the test needs micro-batches with unequal kept tokens, got {kept}"
    assert any(d.abs().max() > 0 for d in after[0])
    for a, b in zip(*after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_with_unequal_kept_tokens_match_one_process(llama_folder, pairs_corpus, tmp_path, parallel):
    """The step's kept tokens are all-reduced over ranks: 2 ranks x 2 windows give one process's 2 micro-batches
    (DDP's replicas and FSDP's shards alike)."""
    from lm_helpers import torchrun
    from msd_fast.train.cli import main as train_main

    common = ["-c", "lm_stdlib_cpu", "--model", str(llama_folder), "--dataset", "text", "--data-dir",
              str(pairs_corpus), "--train-subset", "0", "--seq-len", "24", "--batch-size", "4", "--max-steps", "2",
              "--optimizer", "sgd", "--lr", "0.5", "--momentum", "0", "--weight-decay", "0", "--warmup-epochs", "0",
              "--exit-layers", "1", "--val-size", "2", "--eval-batch-size", "2", "--out-dir", str(tmp_path),
              "--no-progress", "--tensorboard", "false", "--device", "cpu", "--num-threads", "1"]
    torchrun(common + ["--run-name", "ddp", "--parallel", parallel])
    assert train_main(common + ["--run-name", "one", "--accum-steps", "2"]) == 0
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True)["model"] for n in ("ddp", "one"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["world_size"] == 2


def test_a_tampered_mask_or_hf_config_is_refused_in_one_line(llama_folder, pairs_corpus, tmp_path):
    import shutil

    from msd_fast.checkpoint import CheckpointError
    from msd_fast.lm.corpus import CorpusError, load_corpus
    from msd_fast.lm.load import checkpoint_model

    c = tmp_path / "c"
    shutil.copytree(pairs_corpus, c)
    m = bytearray((c / "val.mask.bin").read_bytes())
    m[3] ^= 1
    (c / "val.mask.bin").write_bytes(bytes(m))
    with pytest.raises(CorpusError, match="mask_sha256"):
        load_corpus(c)
    m[3] = 7
    (c / "val.mask.bin").write_bytes(bytes(m))
    with pytest.raises(CorpusError, match="a loss mask holds 0 and 1 only"):
        load_corpus(c, verify=False)
    (c / "val.mask.bin").write_bytes(bytes(m[:-1]))
    with pytest.raises(CorpusError, match="should hold .* uint8 loss-mask values"):
        load_corpus(c)
    (c / "val.mask.bin").unlink()
    with pytest.raises(CorpusError, match="val.mask.bin should hold"):
        load_corpus(c)
    shutil.copyfile(pairs_corpus / "val.mask.bin", c / "val.mask.bin")
    st = np.fromfile(c / "test.starts.bin", dtype=np.int64)
    st[1], st[2] = st[2], st[1]
    st.tofile(c / "test.starts.bin")
    with pytest.raises(CorpusError, match="starts_sha256"):
        load_corpus(c)
    with pytest.raises(CorpusError, match="example starts must rise from 0"):
        load_corpus(c, verify=False)

    from msd_fast.lm.models import pretrained_lm
    model = pretrained_lm(llama_folder, 24, [1])
    cfg = json.loads(model.lm.config.to_json_string(use_diff=False))
    ckpt = {"model_name": str(llama_folder), "num_classes": 300, "width": 1.0, "model": model.state_dict(),
            "lm": {"seq_len": 24, "exit_layers": [1, 3], "heads": "shared", "hf_config": cfg}}
    assert checkpoint_model(ckpt, "ck").num_exits == 2
    for bad, msg in (({**cfg, "auto_map": {"AutoModel": "x.Y"}}, "auto_map"),
                     ({**cfg, "model_type": "evil"}, "model_type 'evil' is not one of"),
                     ({**cfg, "hidden_size": 1 << 16}, "do not fit|shape")):
        with pytest.raises(CheckpointError, match=msg):
            checkpoint_model({**ckpt, "lm": {**ckpt["lm"], "hf_config": bad}}, "ck")


def test_padded_rows_hold_one_example_each_and_its_real_tokens_see_no_pad(llama_folder, pairs_corpus):
    from msd_fast.lm.corpus import load_corpus
    from msd_fast.lm.models import pretrained_lm
    from msd_fast.lm.rows import split_rows

    c = load_corpus(pairs_corpus)
    T = 24
    rows = split_rows(c, "train", T, "padded", torch.device("cpu"))
    st, ids, m = c.starts["train"], np.asarray(c.splits["train"]).astype("int64"), np.asarray(c.mask("train"))
    assert rows.n == len(st) - 1 == c.meta["splits"]["train"]["rows"]
    x, y = rows.rows(torch.arange(rows.n))
    for k in range(rows.n):
        ex, mk = ids[st[k]:st[k + 1]][:T + 1], m[st[k]:st[k + 1]][:T + 1]
        n = len(ex)
        assert x[k, :n - 1].tolist() == list(ex[:-1]) and (x[k, n - 1:] == c.eot_id).all()
        want = [int(t) if keep else -100 for t, keep in zip(ex[1:], mk[1:])] + [-100] * (T + 1 - n)
        assert y[k].tolist() == want
    model = pretrained_lm(llama_folder, T, [1]).eval()
    short = int(np.argmin(np.diff(st)))
    n = int(st[short + 1] - st[short]) - 1
    with torch.no_grad():
        alone = model.logits(model(x[short:short + 1, :n]), -1)
        padded = model.logits(model(x[short:short + 1]), -1)[:, :n]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


def test_cli_trains_and_evaluates_padded_batches_and_a_bpe_corpus_refuses_them(llama_folder, pairs_corpus, tmp_path,
                                                                               capsys):
    from lm_helpers import tiny_corpus
    from msd_fast.lm.cli import main as lm_main
    from msd_fast.train.cli import main as train_main

    argv = ["-c", "lm_stdlib_cpu", "--model", str(llama_folder), "--dataset", "text", "--data-dir", str(pairs_corpus),
            "--train-subset", "0", "--seq-len", "24", "--batch-size", "4", "--max-steps", "3", "--exit-layers", "1",
            "--lm-batching", "padded", "--val-size", "4", "--eval-batch-size", "4", "--out-dir",
            str(tmp_path / "runs"), "--run-name", "pad", "--no-progress", "--tensorboard", "false"]
    assert train_main(argv) == 0
    res = json.loads((tmp_path / "runs" / "pad" / "results.json").read_text())
    assert all(np.isfinite(res["last"]["val_ppl"]))
    assert lm_main(["evaluate", str(tmp_path / "runs" / "pad"), "--split", "val", "--max-sequences", "4", "--json",
                    str(tmp_path / "e.json")]) == 0  # the run's own batching: its val examples, padded
    e = json.loads((tmp_path / "e.json").read_text())
    torch.testing.assert_close(torch.tensor(e["exits"]), torch.tensor(res["last"]["val_ppl"]), rtol=1e-4, atol=0)
    other = tiny_corpus(tmp_path)
    assert train_main(["-c", "lm_stdlib_cpu", "--data-dir", str(other), "--lm-batching", "padded", "--max-steps", "1",
                       "--out-dir", str(tmp_path / "runs"), "--no-progress", "--tensorboard", "false"]) == 2
    assert "lm_batching padded: corpus" in capsys.readouterr().err
