"""An LM run's weights as a Hugging Face model folder plus its exits: `export_lm(run, out)` writes
out/hf/ (the trunk and head by `save_pretrained`: config.json + model.safetensors, with the corpus's end-of-text
token as eos; and the corpus's tokenizer.json with a tokenizer_config.json, so `AutoTokenizer.from_pretrained(
out/hf)` loads it), out/exit_heads.safetensors (per-exit heads, when the run has them) and out/exits.json (exit
layers, heads, the corpus trained on, and the SHA-256 of every file; written last, so a half-written export
has none and is not read). Older exports hold out/tokenizer.json instead; they still load. load.py reads it back (load_lm, load_lm_export), checking every file first."""
import json
import pathlib
import shutil
from typing import Dict

from ..files import check_writable, sha256_of
from .corpus import CorpusError, check_same_corpus, corpus_dir, load_corpus
from .load import EXPORT_FORMAT, EXPORT_VERSION, load_lm


def export_lm(run, out_dir, data_dir=None) -> Dict[str, str]:
    """Exports a run (directory or checkpoint). The corpus (data_dir, else the run's) must be the one it was
    trained on; its tokenizer goes along when it is there."""
    from safetensors.torch import save_file

    check_writable(out_dir, "out", True)
    model, rec = load_lm(run)
    try:
        corpus = load_corpus(corpus_dir(data_dir or rec["config"].get("data_dir")))
    except CorpusError:
        if data_dir is not None:
            raise
        corpus = None  # the run's corpus is elsewhere: the weights still export, without a tokenizer
    if corpus is not None:
        check_same_corpus(corpus, rec["trained_on"], str(run))
        corpus.tokenizer()  # checked before it is copied
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "exits.json").unlink(missing_ok=True)
    hf = out / "hf"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf / name).unlink(missing_ok=True)
    if corpus is not None:
        for c in (model.lm.config, model.lm.generation_config):
            if getattr(c, "eos_token_id", None) is None:
                c.eos_token_id = corpus.eot_id
    model.lm.save_pretrained(hf, safe_serialization=True)
    if corpus is not None:
        shutil.copyfile(corpus.path / "tokenizer.json", hf / "tokenizer.json")
        eos = corpus.tokenizer().id_to_token(corpus.eot_id)
        (hf / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "model_max_length": rec["lm"]["seq_len"]},
            indent=1))
    files = sorted(p for p in hf.iterdir() if p.is_file())
    if model.heads == "per_exit":
        save_file({f"exit_{n}": p.detach().contiguous() for n, p in enumerate(model.exit_heads)},
                  str(out / "exit_heads.safetensors"))
        files.append(out / "exit_heads.safetensors")
    (out / "tokenizer.json").unlink(missing_ok=True)  # an older export's place for it
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "model": rec["model_name"],
            "exit_layers": list(model.exit_layers), "heads": model.heads, "seq_len": rec["lm"]["seq_len"],
            "method": rec["config"].get("method"), "epoch": rec["epoch"], "trained_on": rec["trained_on"],
            "sha256": {p.relative_to(out).as_posix(): sha256_of(p) for p in files}}
    (out / "exits.json").write_text(json.dumps(meta, indent=1))
    return {"dir": str(out), "exits": str(out / "exits.json")}
