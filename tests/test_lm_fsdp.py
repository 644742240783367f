"""parallel fsdp (msd_fast/train/sharding.py) under torchrun with 2 gloo processes: a step equals one process's
on the same global batch, shared and per-exit heads and curricula included; a run stopped mid-training resumes
exactly, on another number of processes too; image tasks refuse fsdp in one line."""
import json

import pytest
import torch

from lm_helpers import tiny_corpus, torchrun


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("fsdp"))


def _args(corpus, out, **kw):
    a = {"--data-dir": str(corpus), "--seq-len": "16", "--width": "0.5", "--batch-size": "4", "--epochs": "1",
         "--train-subset": "0", "--exit-layers": "1 4", "--val-size": "2", "--eval-batch-size": "2",
         "--out-dir": str(out), "--device": "cpu", "--num-threads": "1", "--tensorboard": "false",
         # SGD: Adam's update divides by the gradient's size, so rounding-level differences of near-zero
         # gradients (another reduction order) would show up in the weights as if they were real
         "--optimizer": "sgd", "--lr": "0.5", "--momentum": "0.9", "--weight-decay": "0", "--warmup-epochs": "0",
         **kw}
    return ["-c", "lm_stdlib_cpu", "--no-progress"] + [x for k, v in a.items() for x in (k, *v.split())]


def _weights(run):
    return torch.load(run / "last.pt", weights_only=True)["model"]


def _same_updates(a, b, init, tol=1e-3):
    """Each tensor's training update equal to `tol` of its size: the processes add the gradients in another
    order, and momentum SGD carries those roundings on."""
    for k in a:
        du = (a[k].double() - b[k].double()).norm()
        assert du <= tol * (b[k].double() - init[k].double()).norm() + 1e-9, (k, float(du))


def _init(corpus, heads):
    from msd_fast.lm.corpus import load_corpus
    from msd_fast.lm.models import create_lm

    torch.manual_seed(0)  # the task's seed, then the model (task.py)
    return create_lm("llama-tiny", load_corpus(corpus).vocab_size, 16, 0.5, [1, 4], heads).state_dict()


@pytest.mark.parametrize("extra", [{}, {"--lm-heads": "per_exit", "--exit-curriculum": "gradual",
                                        "--exit-weights": "linear_l"}])
def test_two_fsdp_ranks_equal_one_process(corpus, tmp_path, extra):
    from msd_fast.train.cli import main

    kw = {"--max-steps": "3", **extra}
    torchrun(_args(corpus, tmp_path, **kw, **{"--parallel": "fsdp", "--run-name": "fsdp"}))
    assert main(_args(corpus, tmp_path, **kw, **{"--run-name": "one", "--accum-steps": "2"})) == 0
    a, b = _weights(tmp_path / "fsdp"), _weights(tmp_path / "one")
    assert set(a) == set(b)
    _same_updates(a, b, _init(corpus, extra.get("--lm-heads", "shared")))
    res = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert res["world_size"] == 2 and res["parallel"] == "fsdp"


def test_an_fsdp_run_resumes_exactly_on_two_or_one_processes(corpus, tmp_path):
    from msd_fast.train.cli import main

    torchrun(_args(corpus, tmp_path, **{"--parallel": "fsdp", "--max-steps": "4", "--run-name": "full"}))
    torchrun(_args(corpus, tmp_path, **{"--parallel": "fsdp", "--max-steps": "2", "--run-name": "part"}))
    torchrun(["--resume", str(tmp_path / "part"), "--max-steps", "4"])
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a:  # the same processes, the same order: the same numbers
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # on one process (the checkpoint holds whole tensors): the same run up to the reduction order
    torchrun(_args(corpus, tmp_path, **{"--parallel": "fsdp", "--max-steps": "2", "--run-name": "one"}))
    assert main(["--resume", str(tmp_path / "one"), "--max-steps", "4"]) == 0
    _same_updates(_weights(tmp_path / "one"), a, _init(corpus, "shared"))


def test_image_tasks_refuse_fsdp(capsys):
    from msd_fast.train.cli import main

    assert main(["--parallel", "fsdp", "--max-steps", "1"]) == 2
    assert "parallel fsdp (from flag --parallel) shards an LM's decoder layers" in capsys.readouterr().err


def test_activation_checkpointing_trains_the_same_weights(corpus, tmp_path):
    from msd_fast.train.cli import main

    for name, flag in (("plain", "false"), ("ckpt", "true")):
        assert main(_args(corpus, tmp_path, **{"--max-steps": "2", "--run-name": name,
                                               "--activation-checkpointing": flag})) == 0
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_fsdp_with_activation_checkpointing_equals_one_process(corpus, tmp_path):
    from msd_fast.train.cli import main

    kw = {"--max-steps": "2", "--activation-checkpointing": "true"}
    torchrun(_args(corpus, tmp_path, **kw, **{"--parallel": "fsdp", "--run-name": "fsdp"}))
    assert main(_args(corpus, tmp_path, **kw, **{"--run-name": "one", "--accum-steps": "2"})) == 0
    _same_updates(_weights(tmp_path / "fsdp"), _weights(tmp_path / "one"), _init(corpus, "shared"))
