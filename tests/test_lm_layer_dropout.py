"""LayerSkip's layer dropout (msd_fast/lm/layer_dropout.py): torchtune's per-layer probabilities, per-sequence
skips equal to running each sequence through its kept layers only, draws fixed by (seed, step) so a resumed
run trains as an uninterrupted one, off in eval mode."""
import copy
import math

import pytest
import torch

from lm_helpers import need_transformers, tiny_corpus


def test_per_layer_probabilities_follow_torchtunes_scales():
    from msd_fast.lm.layer_dropout import layer_scale

    L = 5  # S(l) as torchtune's get_scale writes it, with scale_period L - 1
    want = {"uniform": [1.0] * L, "linear": [j / 4 for j in range(L)],
            "exp": [math.exp(j * math.log(2) / 4) - 1 for j in range(L)],
            "log": [math.log(j + 1) / math.log(5) for j in range(L)],
            "sin": [math.sin(0.5 * math.pi * j / 4) for j in range(L)],
            "sigmoid": [1 / (1 + math.exp(-10 * (j / 4 - 0.5))) for j in range(L)]}
    for kind, values in want.items():
        assert [layer_scale(kind, j, L) for j in range(L)] == pytest.approx(values, abs=1e-12), kind
    with pytest.raises(ValueError, match="layer_dropout_scale must be one of"):
        layer_scale("step", 0, L)


def test_draws_are_a_function_of_seed_step_layer_and_row():
    from msd_fast.lm.layer_dropout import uniform_draws

    s = torch.tensor(7)
    a = uniform_draws(0, s, 2, 20000)
    assert torch.equal(a, uniform_draws(0, torch.tensor(7), 2, 20000))
    assert not torch.equal(a, uniform_draws(0, torch.tensor(8), 2, 20000))
    assert not torch.equal(a, uniform_draws(1, s, 2, 20000)) and not torch.equal(a, uniform_draws(0, s, 3, 20000))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.01 and abs((a < 0.3).double().mean() - 0.3) < 0.01


def test_a_skipped_layer_passes_each_sequence_through_unchanged():
    need_transformers()
    from msd_fast.lm.layer_dropout import LayerDropout, uniform_draws
    from msd_fast.lm.models import create_lm

    torch.manual_seed(0)
    model = create_lm("llama-tiny", 97, 16, 0.5, [1, 4]).train()
    base = copy.deepcopy(model)  # before the hooks: the references below have none
    drop = LayerDropout(model, 0.8, "uniform", seed=3)
    drop.set_step(5)
    x = torch.randint(0, 97, (6, 16))
    out = model(x)
    skipped = [[uniform_draws(3, torch.tensor(5), j, 6)[b] < 0.8 for j in range(model.num_layers)] for b in range(6)]
    assert any(any(s) for s in skipped) and any(not all(s) for s in skipped)
    for b in range(6):  # the reference: the sequence through its kept layers alone
        ref = copy.deepcopy(base)
        assert not LayerDropout(ref, 0.0).handles  # p_max 0: no hooks
        layers = ref.trunk_layers
        kept = [layers[j] for j in range(len(layers)) if not skipped[b][j]]
        layers._modules = {str(i): m for i, m in enumerate(kept)}
        with torch.no_grad():
            want = ref.trunk(input_ids=x[b:b + 1], use_cache=False).last_hidden_state
        torch.testing.assert_close(out.hidden[-1][b:b + 1], want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # eval mode: no layer is skipped
        torch.testing.assert_close(model.eval()(x).hidden[-1], base.eval()(x).hidden[-1])
    drop.remove()
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x).hidden[-1], base.train()(x).hidden[-1])


def test_training_with_layer_dropout_resumes_exactly(tmp_path):
    from msd_fast import Trainer

    corpus = tiny_corpus(tmp_path)
    cfg = {"task": "lm", "dataset": "python-stdlib", "data_dir": str(corpus), "model": "llama-tiny", "width": 0.5,
           "seq_len": 16, "batch_size": 4, "epochs": 2, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0,
           "amp": "none", "compile": False, "out_dir": str(tmp_path / "runs"), "progress": False,
           "tensorboard": False, "eval_batch_size": 8, "val_size": 6, "exit_layers": [1, 4], "log_interval": 2,
           "layer_dropout": 0.5, "layer_dropout_scale": "linear"}
    full = Trainer({**cfg, "run_name": "full"}).fit()["last"]["val_ppl"]
    off = Trainer({**cfg, "run_name": "off", "layer_dropout": 0.0}).fit()["last"]["val_ppl"]
    assert off != full  # the dropout changed training
    Trainer({**cfg, "run_name": "part", "max_steps": 3}).fit()
    rest = Trainer({**cfg, "run_name": "part", "resume": str(tmp_path / "runs" / "part")}).fit()["last"]["val_ppl"]
    torch.testing.assert_close(torch.tensor(rest), torch.tensor(full), rtol=1e-5, atol=0)


def test_layer_dropout_is_checked_and_lm_only():
    from msd_fast.train.config import ConfigError
    from msd_fast.train.config_keys import TrainConfig

    with pytest.raises(ConfigError, match="layer_dropout applies to task lm only"):
        TrainConfig.from_mapping({"layer_dropout": 0.1})
    with pytest.raises(ConfigError, match="layer_dropout"):
        TrainConfig.from_mapping({"task": "lm", "dataset": "python-stdlib", "model": "llama-tiny",
                                  "layer_dropout": 1.0})
