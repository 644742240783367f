"""The language-model task through the same trainer, CLI, run directories, checkpoints and resume as images:
tiny corpora and models, CPU, seconds."""
import json

import pytest
import torch

from lm_helpers import tiny_corpus


def _cfg(tmp_path, corpus, **kw):
    cfg = {"task": "lm", "dataset": "python-stdlib", "data_dir": str(corpus), "model": "llama-tiny", "width": 0.5,
           "seq_len": 16, "batch_size": 4, "epochs": 2, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0,
           "amp": "none", "compile": False, "out_dir": str(tmp_path / "runs"), "progress": False,
           "tensorboard": False, "eval_batch_size": 8, "val_size": 6, "exit_layers": [1, 4], "log_interval": 2}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("lm"))


@pytest.mark.parametrize("method", ["msd", "byot", "joint", "plain"])
def test_each_method_trains_and_reports_per_exit_perplexity(tmp_path, corpus, method):
    from msd_fast import Trainer

    t = Trainer(_cfg(tmp_path, corpus, method=method, epochs=1, beta_begin=0.1, beta_end=0.1))
    res = t.fit()
    assert res["metric"] == "ppl" and len(res["last"]["test_ppl"]) == 3
    ppl = res["last"]["test_ppl"]
    assert all(1.0 < p < 1e4 for p in ppl), ppl
    hist = [json.loads(x) for x in (t.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "train_acc" not in hist[-1] and len(hist[-1]["train_ce"]) == 3
    assert "images_per_s" not in hist[-1] and hist[-1]["tokens_per_s"] > 0 and res["metric_title"] == "perplexity"
    if method == "plain":
        assert hist[-1]["train_ce"][:2] == [0.0, 0.0]
    ck = torch.load(t.run_dir / "last.pt", weights_only=True)
    assert ck["lm"]["exit_layers"] == [1, 4, 7] and ck["num_classes"] == t.task.corpus.vocab_size
    assert "in_channels" not in ck  # a task writes its own fields only
    if method == "msd":
        from msd_fast.checkpoint import CheckpointError
        from msd_fast.models.loading import load_model
        with pytest.raises(CheckpointError, match="not an image model's checkpoint .*python -m msd_fast.lm"):
            load_model(t.run_dir)


def test_training_lowers_perplexity_and_resume_continues_exactly(tmp_path, corpus):
    from msd_fast import Trainer

    full = Trainer(_cfg(tmp_path, corpus, run_name="full")).fit()
    first = full["last"]["val_ppl"]
    hist0 = json.loads((tmp_path / "runs" / "full" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(a < b for a, b in zip(first, hist0["val_ppl"])) or first[-1] < hist0["val_ppl"][-1]
    part = Trainer(_cfg(tmp_path, corpus, run_name="part", epochs=2, max_steps=3))
    part.fit()
    cfg = _cfg(tmp_path, corpus, run_name="part")
    cfg["resume"] = str(tmp_path / "runs" / "part")
    rest = Trainer(cfg).fit()
    torch.testing.assert_close(torch.tensor(rest["last"]["val_ppl"]), torch.tensor(first), rtol=1e-4, atol=0)


def test_exit_weight_schedules_and_per_exit_heads_train(tmp_path, corpus):
    from msd_fast import Trainer
    from msd_fast.loss import exit_weight_schedule

    t = Trainer(_cfg(tmp_path, corpus, epochs=1, exit_weights="linear_l", lm_heads="per_exit", max_steps=2))
    assert t.task.exit_weights == pytest.approx(exit_weight_schedule("linear_l", [2, 5, 8]))
    assert t.task.exit_weights == pytest.approx([3 * 2 / 15, 3 * 5 / 15, 3 * 8 / 15])
    t.fit()


def _on(depths, on):
    """sqrt_l over the exits that are on (1-based depths), scaled to sum to the 3 exits, 0 for the others."""
    from msd_fast.loss import exit_weight_schedule

    w = iter(exit_weight_schedule("sqrt_l", [d for d, o in zip(depths, on) if o]))
    return [next(w) * 3 / sum(on) if o else 0.0 for o in on]


@pytest.mark.parametrize("curriculum,steps,at_stop,at_end", [
    ("round_robin", 5, "fixed:1,0,1", "fixed:0,1,1"), ("rotational", 5, "on:0,0,1", "on:1,1,1"),
    ("gradual", 3, "on:0,1,1", "on:1,1,1"), ("warmup_linear", 2, "fixed:0.3333333,0.3333333,1", "fixed:1,1,1")])
def test_exit_curricula_switch_exits_per_step_and_resume_where_they_were(tmp_path, corpus, curriculum, steps,
                                                                         at_stop, at_end):
    from msd_fast import Trainer
    from msd_fast.loss import exit_weight_schedule

    # 12 training windows / batch 4: 3 steps per epoch, 6 planned; exits after layers 2, 5, 8 of 8. The last
    # step run is steps - 1: round_robin step 4 trains exit 4 % 2 = 0; rotational step 4 rolls the exits'
    # mask (layers 1, 4, 7) by 4 layers, onto none of them but the last; gradual at 2/6 of training has layer
    # 4's exit on (from 0.5 * 4/8), not layer 1's (from 0.5 * 7/8); warmup_linear at step 1 (1/6 of training)
    # weighs the shallower exits 1/6 / 0.5. At the end (step 5): rotational's roll by 5 covers every exit.
    base, depths = exit_weight_schedule("sqrt_l", [2, 5, 8]), [2, 5, 8]

    def want(spec):
        kind, vals = spec.split(":")
        vals = [float(v) for v in vals.split(",")]
        return [b * v for b, v in zip(base, vals)] if kind == "fixed" else _on(depths, vals)

    t = Trainer(_cfg(tmp_path, corpus, exit_curriculum=curriculum, exit_weights="sqrt_l", lm_heads="per_exit",
                     train_subset=12, run_name="c", max_steps=steps))
    t.fit()
    assert t.task.exit_weights_t.tolist() == pytest.approx(want(at_stop))
    cfg = _cfg(tmp_path, corpus, exit_curriculum=curriculum, exit_weights="sqrt_l", lm_heads="per_exit",
               train_subset=12, run_name="c", max_steps=0)
    cfg["resume"] = str(tmp_path / "runs" / "c")
    r = Trainer(cfg)
    assert r.global_step == steps and r.fit()["last"]["val_ppl"]
    assert r.task.exit_weights_t.tolist() == pytest.approx(want(at_end))


def test_a_checkpoint_of_the_earlier_rotational_does_not_resume(tmp_path, corpus):
    from msd_fast import Trainer
    from msd_fast.checkpoint import CheckpointError

    Trainer(_cfg(tmp_path, corpus, exit_curriculum="rotational", run_name="old", max_steps=1)).fit()
    f = tmp_path / "runs" / "old" / "last.pt"
    ck = torch.load(f, weights_only=True)
    del ck["lm"]["curricula"]  # as msd_fast wrote it before torchtune's definitions
    from msd_fast.checkpoint import atomic_save
    atomic_save(ck, f)
    cfg = _cfg(tmp_path, corpus, exit_curriculum="rotational", run_name="old")
    cfg["resume"] = str(tmp_path / "runs" / "old")
    with pytest.raises(CheckpointError, match="earlier rotational is now round_robin"):
        Trainer(cfg)


def test_a_switched_off_exit_gets_no_gradient_through_its_own_terms(tmp_path, corpus):
    from msd_fast import Trainer

    t = Trainer(_cfg(tmp_path, corpus, exit_curriculum="round_robin", lm_heads="per_exit", max_steps=1))
    crit = t.task.criterion(t.method.build(t.cfg, t.model.num_exits))
    x, y = t.batches.make(torch.arange(4), None)
    loss, _ = crit(t.model(x), y, torch.zeros(()))
    loss.backward()
    heads = t.model.exit_heads  # step 0: exit 0 and the last train; exit 1 only teaches (detached)
    assert heads[0].grad.abs().sum() > 0 and heads[1].grad is not None and heads[1].grad.abs().sum() == 0


def test_config_refuses_mixed_tasks(tmp_path, corpus):
    from msd_fast.train.config import ConfigError
    from msd_fast.train.config_keys import TrainConfig

    with pytest.raises(ConfigError, match="is not a dataset of task 'lm'"):
        TrainConfig.from_mapping(_cfg(tmp_path, corpus, dataset="fashion-mnist"))
    with pytest.raises(ConfigError, match="model must be one of llama-tiny"):
        TrainConfig.from_mapping(_cfg(tmp_path, corpus, model="resnet18"))
    with pytest.raises(ConfigError, match="label_smoothing must be 0.0 for task lm"):
        TrainConfig.from_mapping(_cfg(tmp_path, corpus, label_smoothing=0.1))
    with pytest.raises(ConfigError, match="exit_layers applies to task lm only"):
        TrainConfig.from_mapping({"exit_layers": [1, 2]})
    with pytest.raises(ConfigError, match="exit_weights must be one of"):
        TrainConfig.from_mapping(_cfg(tmp_path, corpus, exit_weights="cubic"))
    with pytest.raises(ConfigError, match="exit_curriculum must be one of none, rotational, gradual"):
        TrainConfig.from_mapping(_cfg(tmp_path, corpus, exit_curriculum="random"))
    with pytest.raises(ConfigError, match="exit_curriculum applies to task lm only"):
        TrainConfig.from_mapping({"exit_curriculum": "gradual"})


def test_cli_train_evaluate_decode(tmp_path, corpus, capsys):
    from msd_fast.lm.cli import main as lm_main
    from msd_fast.train.cli import main as train_main

    argv = ["-c", "lm_stdlib_cpu", "--data-dir", str(corpus), "--seq-len", "16", "--width", "0.5",
            "--batch-size", "4", "--train-subset", "0", "--max-steps", "3", "--val-size", "4", "--out-dir",
            str(tmp_path / "runs"), "--run-name", "cli", "--no-progress", "--tensorboard", "false"]
    assert train_main(argv) == 0
    table = capsys.readouterr().out.split("Per-exit perplexity")[1]
    assert "| exit | GFLOPs | val (last) | test (last) | val (best) | test (best) |" in table and "nan" not in table
    run = tmp_path / "runs" / "cli"
    assert lm_main(["evaluate", str(run), "--max-sequences", "4", "--json", str(tmp_path / "e.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert len(e["exits"]) == 4 and e["curve"][-1]["avg_layers"] == 8.0 and e["curve"][0]["avg_layers"] == 2.0
    assert lm_main(["decode", str(run), "--prompts", "2", "--prompt-tokens", "6", "--new-tokens", "5",
                    "--thresholds", "0.0", "--rounds", "2", "--json", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    full, first = d["rows"]
    assert full["threshold"] is None and full["agreement"] == 100.0 and full["speed_vs_full"] == 1.0
    assert (full["layer_calls_per_token"], full["head_checks_per_token"], full["weights_vs_full"]) == (8.0, 1.0, 1.0)
    # threshold 0: every token leaves at layer 2 after one head check, and no later token catches it up
    assert (first["avg_layers"], first["layer_calls_per_token"], first["head_checks_per_token"]) == (2.0, 2.0, 1.0)
    assert 0 < first["weights_vs_full"] < 1 and first["tokens_per_s"] > 0
    assert lm_main(["decode", str(run), "--rounds", "0"]) == 2
    assert "--rounds: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert lm_main(["decode", str(run), "--prompts", "1", "--prompt-tokens", "4", "--new-tokens", "3", "--rounds",
                    "1", "--thresholds", "0.0", "--check-exits", "1", "--draft-tokens", "2", "--json",
                    str(tmp_path / "d1.json")]) == 0
    full, every, one, spec = json.loads((tmp_path / "d1.json").read_text())["rows"]
    assert (every["exits"], one["exits"], one["avg_layers"]) == (None, [1], 4.0)
    assert (spec["draft_exit"], spec["draft_tokens"], spec["identical"]) == (0, 2, 100.0)
    assert lm_main(["decode", str(run), "--check-exits", "7"]) == 2
    assert "--check-exits: the model has exits 0..3, got [7]" in capsys.readouterr().err
    assert lm_main(["export", str(run), str(tmp_path / "export")]) == 0
    assert lm_main(["evaluate", str(tmp_path / "export"), "--data-dir", str(corpus), "--max-sequences", "4",
                    "--json", str(tmp_path / "e2.json")]) == 0
    assert json.loads((tmp_path / "e2.json").read_text())["exits"] == e["exits"]
    from msd_fast.lm.hf import transformers
    hf = tmp_path / "export" / "hf"
    tok, cfg = transformers().AutoTokenizer.from_pretrained(hf), json.loads((hf / "config.json").read_text())
    assert tok.eos_token == "<|endoftext|>" and cfg["eos_token_id"] == tok.eos_token_id
    (tmp_path / "export" / "hf" / "config.json").write_text("{}")
    assert lm_main(["evaluate", str(tmp_path / "export"), "--data-dir", str(corpus)]) == 2
    assert "SHA-256 does not match" in capsys.readouterr().err
    assert lm_main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "error" in capsys.readouterr().err
    missing = [x if x != str(corpus) else str(tmp_path / "missing") for x in argv]
    assert train_main([x if x != "cli" else "x" for x in missing]) == 2
    assert "python -m msd_fast.lm corpus --out" in capsys.readouterr().err


def test_the_image_path_never_imports_transformers():
    import subprocess
    import sys

    code = ("import sys, msd_fast, msd_fast.train.trainer, msd_fast.evaluate.run, msd_fast.models\n"
            "from msd_fast.train.config import resolve_config\nresolve_config([])\n"
            "print(sorted(m for m in ('transformers', 'tokenizers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_new_method_is_one_loss_spec_that_both_tasks_build(tmp_path, corpus):
    """A method says what it trains (a LossSpec); the LM task builds the fused linear criterion from it, the
    image task MSDLoss; a method that returns its own module is refused by the LM task in one line."""
    from msd_fast import Trainer
    from msd_fast.image.criterion import MultiExitCriterion, image_criterion
    from msd_fast.train.methods import METHODS, LossSpec, Method, register_method
    from msd_fast.lm.task import LMCriterion

    @register_method
    class HalfBYOT(Method):
        name, help = "test-half-byot", "one-way KD at alpha 0.5"

        def build(self, cfg, num_exits):
            return LossSpec("msd", alpha=0.5, temperature=2.0, teacher="last")

    @register_method
    class OwnModule(Method):
        name, help = "test-own-module", "a criterion module of its own"

        def build(self, cfg, num_exits):
            return torch.nn.Identity()

    try:
        t = Trainer(_cfg(tmp_path, corpus, method="test-half-byot", max_steps=2))
        crit = t.step.criterion
        assert isinstance(crit, LMCriterion) and crit.loss.alpha == 0.5 and crit.loss.teacher == "last"
        assert t.fit()["last"]["val_ppl"]
        img = image_criterion(HalfBYOT().build(None, 3), 3)
        assert isinstance(img, MultiExitCriterion) and img.loss.alpha == 0.5 and img.loss.temperature == 2.0
        with pytest.raises(ValueError, match="task lm: the method returned a Identity, not a LossSpec"):
            Trainer(_cfg(tmp_path, corpus, method="test-own-module", out_dir=str(tmp_path / "r2")))
        assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())
        with pytest.raises(ValueError, match="LossSpec.kind: expected one of msd, final_ce"):
            LossSpec("mse")
    finally:
        METHODS.pop("test-half-byot", None), METHODS.pop("test-own-module", None)
