"""Integrity of everything written: checkpoints carry their zip records' CRC-32s, checked on every load (resume,
evaluate, load_model), with the previous last.pt kept as last-prev.pt; resume takes the checkpoint's own config;
exports carry a SHA-256 and refuse NaN weights. Each case asserts the one line a user sees."""
import json
import pathlib
import shutil
import struct
import zipfile

import pytest
import torch

from msd_fast.checkpoint import PREVIOUS_NAME, CheckpointError, load_checkpoint
from msd_fast.evaluate.cli import main as evaluate_main
from msd_fast.models import export_weights, load_exported, load_model
from msd_fast.train import main

BASE = ["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--batch-size", "64",
        "--no-progress", "--tensorboard", "false", "--lr", "0.05", "--eval-batch-size", "512"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    assert main(BASE + ["--epochs", "2", "--out-dir", str(root), "--run-name", "run"]) == 0
    return root / "run"


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _flip_two_bytes_in_a_tensor(path: pathlib.Path) -> None:
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[at] ^= 0x5A
    raw[at + 1] ^= 0xA5
    path.write_bytes(bytes(raw))


def test_saving_keeps_the_previous_last_checkpoint(two_epochs):
    last, prev = load_checkpoint(two_epochs / "last.pt"), load_checkpoint(two_epochs / PREVIOUS_NAME)
    assert (last["epoch"], prev["epoch"]) == (2, 1)


def test_a_corrupted_checkpoint_is_refused_naming_the_intact_one(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path / "run")
    _flip_two_bytes_in_a_tensor(run / "last.pt")
    assert main(["--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'last.pt'} is corrupt" in err and "CRC-32" in err and "Traceback" not in err
    assert f"intact: {run / PREVIOUS_NAME} (step" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="CRC-32"):
        load_model(run, which="last")
    assert evaluate_main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "ev")]) == 2
    assert "is corrupt" in capsys.readouterr().err
    # the intact previous checkpoint resumes; the corrupt last.pt is replaced, the good one not rotated away
    assert main(["--resume", str(run / PREVIOUS_NAME)]) == 0  # epoch 2 again, from epoch 1's end
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert load_checkpoint(run / PREVIOUS_NAME)["epoch"] == 1


def test_a_raw_legacy_pickle_is_refused_without_torch_warnings(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path / "run")
    torch.save({"x": torch.ones(2)}, run / "last.pt", _use_new_zipfile_serialization=False)
    assert main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a raw pickle (torch's legacy format)" in err and len(err.strip().splitlines()) == 1


def test_resume_trusts_the_checkpoint_over_an_edited_config_yaml(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path / "run")
    text = (run / "config.yaml").read_text().replace("model: resnet18", "model: msdnet1")
    (run / "config.yaml").write_text(text)
    assert main(["--resume", str(run), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "model: 'msdnet1' there, 'resnet18' in the checkpoint" in out
    assert "model: resnet18" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("edit,expect", [
    ("model_name", "belongs to another model: model 'msdnet1' (this run: 'resnet18')"),
    ("weights", "its model weights do not fit this run's"),
    ("optimizer", "its optimizer state do not fit this run's SGD"),
])
def test_another_models_or_optimizers_state_is_one_line(two_epochs, tmp_path, capsys, edit, expect):
    run = _copy(two_epochs, tmp_path / "run")
    ck = torch.load(run / "last.pt", weights_only=True)
    if edit == "model_name":
        ck["model_name"] = "msdnet1"
    elif edit == "weights":
        ck["model"] = {k + ".x": v for k, v in ck["model"].items()}
    else:
        ck["optimizer"]["param_groups"] = ck["optimizer"]["param_groups"] * 2
    torch.save(ck, run / "last.pt")
    assert main(["--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(run / "last.pt") in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ exports
@pytest.fixture()
def export(two_epochs, tmp_path):
    export_weights(two_epochs, tmp_path / "exp")
    return tmp_path / "exp"


@pytest.mark.parametrize("damage,expect", [
    ("truncate", "SHA-256 does not match"), ("random", "SHA-256 does not match"),
    ("json_list", "expected a JSON object, got a list"), ("json_no_model", "missing keys ['model']"),
    ("json_extra", "unknown keys ['surprise']"), ("json_no_sha", "missing keys ['weights_sha256']"),
])
def test_damaged_exports_are_refused_naming_the_file(export, damage, expect):
    w, j = export / "model.safetensors", export / "model.json"
    meta = json.loads(j.read_text())
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "random":
        w.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    elif damage == "json_list":
        j.write_text(json.dumps([meta]))
    else:
        meta.pop("model") if damage == "json_no_model" else meta.pop("weights_sha256") \
            if damage == "json_no_sha" else meta.update(surprise=1)
    if damage.startswith("json") and damage != "json_list":
        j.write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        load_exported(export)
    assert expect in str(e.value) and str(w if damage in ("truncate", "random") else j) in str(e.value)


def test_nan_weights_are_refused_on_export_and_load(two_epochs, tmp_path):
    run = _copy(two_epochs, tmp_path / "run")
    ck = torch.load(run / "best.pt", weights_only=True)
    name = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][name][0] = float("nan")
    torch.save(ck, run / "best.pt")
    with pytest.raises(ValueError, match=f"weight '{name}' holds NaN"):
        export_weights(run, tmp_path / "exp")
    with pytest.raises(ValueError, match=f"weight '{name}' holds NaN"):
        load_model(run)


def test_load_model_takes_an_instance_not_a_name(two_epochs):
    with pytest.raises(TypeError, match="model: expected a model instance.*got str 'resnet18'"):
        load_model(two_epochs, model="resnet18")


def test_flags_changed_by_a_resume_survive_a_kill_before_the_next_checkpoint(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path / "run")
    text = (run / "config.yaml").read_text().replace("epochs: 2", "epochs: 3")  # as `--resume --epochs 3` records
    (run / "config.yaml").write_text(text)
    assert main(["--resume", str(run)]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 3 and "differs" not in capsys.readouterr().out
