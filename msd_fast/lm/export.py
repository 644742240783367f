"""An LM run's weights as a Hugging Face model folder plus its exits: `export_lm(run, out)` writes
out/hf/ (the trunk and head by `save_pretrained`: config.json + model.safetensors), out/exit_heads.safetensors
(per-exit heads, when the run has them), out/tokenizer.json (the corpus's BPE) and out/exits.json (exit
layers, heads, the run, and the sha256 of every weight file). `load_lm_export(out)` reads it back with
`from_pretrained` on the local folder (safetensors only; nothing is downloaded, no pickle is read) and checks
the hashes first."""
import json
import pathlib
import shutil
from typing import Dict

from ..models.loading import _sha256  # the image exports' file hash

EXPORT_FORMAT, EXPORT_VERSION = "msd_fast-lm-export", 1


def export_lm(run, out_dir, data_dir=None) -> Dict[str, str]:
    from safetensors.torch import save_file

    from .corpus import load_corpus
    from .evaluate import load_lm
    from .task import corpus_dir

    model, ckpt = load_lm(run)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.lm.save_pretrained(out / "hf", safe_serialization=True)
    files = sorted(p for p in (out / "hf").iterdir() if p.is_file())
    if model.heads == "per_exit":
        save_file({f"exit_{n}": p.detach().contiguous() for n, p in enumerate(model.exit_heads)},
                  str(out / "exit_heads.safetensors"))
        files.append(out / "exit_heads.safetensors")
    try:
        shutil.copyfile(load_corpus(corpus_dir(data_dir or ckpt["config"].get("data_dir"))).path / "tokenizer.json",
                        out / "tokenizer.json")
        files.append(out / "tokenizer.json")
    except (OSError, ValueError):
        pass  # the corpus is elsewhere: the weights still export
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "model": ckpt["model_name"],
            "exit_layers": list(model.exit_layers), "heads": model.heads, "seq_len": ckpt["lm"]["seq_len"],
            "method": ckpt["config"].get("method"), "epoch": ckpt["epoch"],
            "sha256": {str(p.relative_to(out)): _sha256(p) for p in files}}
    (out / "exits.json").write_text(json.dumps(meta, indent=1))
    return {"dir": str(out), "exits": str(out / "exits.json")}


def load_lm_export(out_dir, device: str = "cpu"):
    """The LMExits of an export_lm folder, in eval mode; ValueError naming the file for a changed or
    incomplete export."""
    from safetensors.torch import load_file

    from .exits import LMExits
    from .hf import transformers

    d = pathlib.Path(out_dir)
    try:
        meta = json.loads((d / "exits.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{d / 'exits.json'}: not a msd_fast LM export ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or meta.get("format_version") != EXPORT_VERSION:
        raise ValueError(f"{d / 'exits.json'}: not a version-{EXPORT_VERSION} msd_fast LM export")
    for rel, digest in (meta.get("sha256") or {}).items():
        p = d / rel
        if not p.is_file() or _sha256(p) != digest:
            raise ValueError(f"{p}: missing, or its SHA-256 does not match exits.json (the file changed)")
    lm = transformers().AutoModelForCausalLM.from_pretrained(str(d / "hf"), local_files_only=True,
                                                             use_safetensors=True)
    model = LMExits(lm, meta["exit_layers"], meta["heads"])
    if meta["heads"] == "per_exit":
        heads = load_file(str(d / "exit_heads.safetensors"))
        for n, p in enumerate(model.exit_heads):
            p.data.copy_(heads[f"exit_{n}"])
    return model.to(device).eval()
