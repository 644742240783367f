"""Reliability of the LM commands and API: decode / evaluate arguments (empty or over-long prompts, NaN or
negative thresholds, draft tokens 0 or huge, devices, outputs under a file), attach_lm_exits' exit layers, the
fused linear loss's argument checks, a Trainer given the wrong model, a refused start leaving nothing behind,
and the `kernels` name clash with Hugging Face's package. Each bad input is one line (exit status 2)."""
import errno
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

from lm_helpers import need_transformers, tiny_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from msd_fast import Trainer

    root = tmp_path_factory.mktemp("lmcli")
    corpus = tiny_corpus(root)
    t = Trainer({"task": "lm", "dataset": "python-stdlib", "data_dir": str(corpus), "model": "gpt2-tiny",
                 "width": 0.5, "seq_len": 16, "batch_size": 4, "epochs": 1, "max_steps": 1, "amp": "none",
                 "compile": False, "out_dir": str(root / "runs"), "run_name": "g", "progress": False,
                 "tensorboard": False, "val_size": 2, "exit_layers": [1, 4]})
    t.fit()
    return {"run": t.run_dir, "corpus": corpus, "root": root}


def _decode(run, capsys, *args):
    from msd_fast.lm.cli import main

    rc = main(["decode", str(run["run"]), "--prompts", "1", "--prompt-tokens", "4", "--new-tokens", "4",
               "--rounds", "1", "--thresholds", "0.5", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    return rc, err


@pytest.mark.parametrize("args,message", [
    (["--new-tokens", "0"], "--new-tokens: expected an integer >= 1, got 0"),
    (["--prompts", "0"], "--prompts: expected an integer >= 1"),
    (["--threads", "-1"], "--threads: expected an integer >= 0"),
    (["--device", "bogus"], "--device: expected cpu, cuda or cuda:K, got 'bogus'"),
    (["--thresholds", "nan"], "--thresholds: expected finite numbers >= 0"),
    (["--thresholds", "-0.5"], "--thresholds: expected finite numbers >= 0"),
    (["--draft-tokens", "0"], "--draft-tokens: expected an integer >= 1"),
    (["--draft-tokens", "100000"], "at most --new-tokens (4) tokens can be drafted"),
    (["--draft-tokens", "2", "--draft-exit", "2"], "--draft-exit: expected an exit in [0, 1]"),
    (["--check-exits", "5"], "--check-exits: the model has exits 0..2"),
    (["--prompt", ""], "--prompt: the text encodes to no tokens"),
    (["--prompt", "def f(a, b):\n    return a + b\n" * 8], "exceed the model's 16 positions"),
])
def test_bad_decode_arguments_are_one_line(run, capsys, args, message):
    t0 = time.perf_counter()
    rc, err = _decode(run, capsys, *args)
    assert rc == 2 and message in err and time.perf_counter() - t0 < 60


def test_cuda_without_a_gpu_and_outputs_under_a_file_are_refused_before_work(run, tmp_path, capsys):
    if not torch.cuda.is_available():
        rc, err = _decode(run, capsys, "--device", "cuda")
        assert rc == 2 and "no CUDA device is available here" in err
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = _decode(run, capsys, "--json", f / "out.json")
    assert rc == 2 and "--json" in err and "is a file, not a directory" in err
    rc, err = _decode(run, capsys, "--json", tmp_path / "ok.json", "--draft-tokens", "3")
    assert rc == 0 and (tmp_path / "ok.json").is_file()


def test_decoders_check_their_arguments_and_bound_the_draft(run):
    from msd_fast.lm.decode import early_exit_generate
    from msd_fast.lm.load import load_lm
    from msd_fast.lm.speculative import self_speculative_generate

    model, _ = load_lm(run["run"])
    for bad, message in ((dict(threshold=float("nan")), "threshold: expected a finite number"),
                         (dict(threshold=-1.0), "threshold: expected a finite number"),
                         (dict(prompt=[1, 300]), "token ids must lie in \\[0, 300\\)"),
                         (dict(prompt=[-1]), "token ids must lie"), (dict(prompt=[]), "at least one token"),
                         (dict(prompt=[1] * 14), "exceed the model's 16 positions"),
                         (dict(max_new_tokens=-1), "max_new_tokens: expected an int >= 0")):
        kw = {"prompt": [1, 2], "max_new_tokens": 3, **bad}
        with pytest.raises(ValueError, match=message):
            early_exit_generate(model, kw.pop("prompt"), kw.pop("max_new_tokens"), **kw)
    with pytest.raises(TypeError, match="prompt: expected a sequence of token ids"):
        early_exit_generate(model, "def", 3)
    t0 = time.perf_counter()
    out = self_speculative_generate(model, [1, 2, 3], 6, draft_tokens=100_000)  # bounded by the 6 tokens wanted
    assert time.perf_counter() - t0 < 30 and len(out.tokens) == 6
    assert out.tokens == early_exit_generate(model, [1, 2, 3], 6, threshold=2.0).tokens
    for bad, message in ((dict(draft_tokens=0), "draft_tokens: expected an int >= 1"),
                         (dict(draft_tokens=2.5), "draft_tokens"), (dict(draft_exit=2), "draft_exit: expected")):
        with pytest.raises(ValueError, match=message):
            self_speculative_generate(model, [1, 2], 3, **bad)


@pytest.mark.parametrize("layers,message", [
    ([1.0, 4.0], "expected a list of integer layer indices"), (["1", "4"], "expected a list of integer"),
    (torch.tensor([1, 4]), "got Tensor"), ([4, 4], "expected increasing layer indices"),
    ([4, 1], "expected increasing"), ([1, 9], "in \\[0, 7\\]"), ([-1, 4], "in \\[0, 7\\]"),
    ([True, 4], "expected a list of integer"), ([7], "need at least one exit before the last layer")])
def test_attach_lm_exits_refuses_bad_exit_layers(layers, message):
    tf = need_transformers()
    from msd_fast.lm import attach_lm_exits
    from msd_fast.lm.models import lm_config

    lm = tf.AutoModelForCausalLM.from_config(lm_config("llama-tiny", 64, 16, 0.5))
    with pytest.raises(ValueError, match=message):
        attach_lm_exits(lm, layers)


def test_attach_lm_exits_refuses_models_it_cannot_serve():
    tf = need_transformers()
    from msd_fast.lm import attach_lm_exits

    with pytest.raises(ValueError, match="expected a Hugging Face causal LM"):
        attach_lm_exits(torch.nn.Linear(4, 4))
    bert = tf.BertForMaskedLM(tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64))
    with pytest.raises(ValueError, match="is not a supported family; supported: Llama, Qwen2 and GPT-2"):
        attach_lm_exits(bert, [0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_linear_loss_refuses_out_of_range_targets(dtype):
    from msd_fast.loss import fused_linear_msd_loss

    h = [torch.randn(2, 5, 8, dtype=dtype) for _ in range(3)]
    w = torch.randn(11, 8, dtype=dtype)
    for bad in (11, -3):
        y = torch.randint(0, 11, (2, 5))
        y[1, 2] = bad
        with pytest.raises(ValueError, match="target: class indices must lie in \\[0, C=11\\)"):
            fused_linear_msd_loss(h, w, y)
    y[1, 2] = -100  # HF's ignored label is no error
    assert torch.isfinite(fused_linear_msd_loss(h, w, y))


def test_fused_linear_loss_stays_exact_for_huge_finite_hidden_values():
    from msd_fast.loss import fused_linear_msd_loss

    torch.manual_seed(3)
    h = [torch.randn(4, 16) * 1e29 for _ in range(3)]  # logits ~1e30: KL terms far past the old -1e30 clamp
    w = torch.randn(40, 16) * 0.1
    y = torch.randint(0, 40, (4,))
    got = fused_linear_msd_loss(h, w, y, temperature=3.0)
    want = fused_linear_msd_loss([x.double() for x in h], w.double(), y, temperature=3.0)
    assert torch.isfinite(want) and (got.double() - want).abs() / want.abs() < 1e-4, (got, want)


def test_a_trainer_given_a_model_of_another_vocabulary_is_refused(run, tmp_path):
    tf = need_transformers()
    from msd_fast import Trainer
    from msd_fast.lm import attach_lm_exits
    from msd_fast.lm.models import lm_config

    cfg = {"task": "lm", "dataset": "python-stdlib", "data_dir": str(run["corpus"]), "seq_len": 16, "amp": "none",
           "out_dir": str(tmp_path / "runs"), "progress": False, "tensorboard": False, "epochs": 1}
    m = attach_lm_exits(tf.AutoModelForCausalLM.from_config(lm_config("llama-tiny", 512, 16, 0.5)), [1, 4])
    with pytest.raises(ValueError, match="its head has 512 tokens, but the corpus .* has a vocabulary of 300"):
        Trainer(cfg, model=m)
    with pytest.raises(TypeError, match="task lm trains an LMExits"):
        Trainer(cfg, model=torch.nn.Linear(2, 2))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_short_val_splits_are_found_at_the_start_and_a_full_disk_leaves_nothing(run, tmp_path, monkeypatch):
    from msd_fast import Trainer
    from msd_fast.data import DataError
    from msd_fast.lm.corpus import load_corpus
    from msd_fast.train import config as config_module
    from msd_fast.train.run_dir import RunDirError

    c = load_corpus(run["corpus"])
    T = (len(c.splits["val"]) + len(c.splits["train"])) // 2  # longer than val, shorter than train
    assert len(c.splits["val"]) - 1 < T < len(c.splits["train"]) - 1
    cfg = {"task": "lm", "dataset": "python-stdlib", "data_dir": str(run["corpus"]), "model": "llama-tiny",
           "seq_len": T, "batch_size": 1, "amp": "none", "out_dir": str(tmp_path / "runs"), "progress": False,
           "tensorboard": False, "epochs": 1, "run_name": "r"}
    with pytest.raises(DataError, match="the val split \\(val.bin, .* holds no sequence of --seq-len"):
        Trainer(cfg)

    def full_disk(cfg, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(config_module, "save_config", full_disk)
    with pytest.raises(RunDirError, match="cannot write .*config.yaml \\(no space left on the device\\); the new run "
                                          "directory was removed"):
        Trainer({**cfg, "seq_len": 16})
    assert not (tmp_path / "runs" / "r").exists()


def test_transformers_imported_before_msd_fast_from_the_repository_root():
    need_transformers()
    code = ("import transformers, transformers.integrations.hub_kernels; import msd_fast; import kernels; "
            "import msd_fast.kernels as ours; from msd_fast.lm import attach_lm_exits; "
            "print(kernels.__file__); print(ours.__file__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    theirs, ours = r.stdout.split()
    assert not pathlib.Path(theirs).is_relative_to(ROOT / "kernels") and ours.endswith("kernels/__init__.py")


@pytest.mark.parametrize("after_s", [0.3, 0.8, 1.5, 2.5])
def test_ctrl_c_while_a_command_starts_is_one_line(tmp_path, after_s):
    import signal

    need_transformers()
    p = subprocess.Popen([sys.executable, "-m", "msd_fast.lm", "corpus", "--out", str(tmp_path / "c"),
                          "--vocab-size", "300"], cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    time.sleep(after_s)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert "Traceback" not in err and p.returncode in (0, 130), err[-2000:]
    assert p.returncode == 0 or "interrupted by Ctrl-C" in err and len(err.strip().splitlines()) == 1
    assert p.returncode == 0 or not (tmp_path / "c" / "meta.json").exists()


def _run_as_command(code: str, tmp_path):
    """Runs code in a process whose command line reads as `python -m msd_fast.lm` (interrupt.py's test)."""
    prelude = "import sys; sys.argv = ['-m']; sys.orig_argv = [sys.executable, '-m', 'msd_fast.lm']; "
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_ctrl_c_swallowed_by_a_library_while_starting_still_ends_the_command(tmp_path):
    # torch's start-up clears errors from its numpy import: an interrupt raised as an exception there is lost
    code = ("import os, signal, time; import msd_fast\n"
            "try:\n    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\nexcept BaseException:\n    pass\n"
            "print('survived')")
    r = _run_as_command(code, tmp_path)
    assert r.returncode == 130 and "survived" not in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == ["[msd_fast] interrupted by Ctrl-C while starting; nothing was written"]


def test_ctrl_c_after_the_command_started_is_the_commands_own(tmp_path):
    code = ("import os, signal, time; import msd_fast; from msd_fast.interrupt import command_started\n"
            "command_started()\ntry:\n    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
            "except KeyboardInterrupt:\n    print('handled')")
    r = _run_as_command(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "handled", r.stderr[-2000:]


def test_an_importing_program_keeps_its_own_ctrl_c():
    from msd_fast.interrupt import started_as_command

    assert started_as_command(["-m", "-c", "x"], ["python", "-X", "dev", "-m", "msd_fast.train", "-c", "x"])
    assert not started_as_command(["/x/pytest/__main__.py", "-m", "msd_fast"], ["python", "-m", "pytest", "-m",
                                                                              "msd_fast"])
    assert not started_as_command(["-m", "-m", "msd_fast"], ["python", "-m", "pytest", "-m", "msd_fast"])
    assert not started_as_command(["-m"], ["python", "-m", "bench.bench_loss"])
    assert not started_as_command(["x.py"], ["python", "x.py"])
    code = "import signal, msd_fast; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "True", r.stderr[-2000:]
