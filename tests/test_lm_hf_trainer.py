"""An attached model as a Hugging Face causal-LM drop-in: forward(input_ids, attention_mask, labels) returns
.loss by HF's contract (unshifted labels, -100 ignored, num_items_in_batch), and transformers.Trainer trains
it unchanged, gradient accumulation, padding and gradient checkpointing included."""
import pytest
import torch

from lm_helpers import need_transformers

V, T = 300, 12


def _model(**loss_kw):
    tf = need_transformers()
    from msd_fast.lm import attach_lm_exits
    from msd_fast.lm.models import lm_config
    from msd_fast.loss import FusedLinearMSDLoss

    torch.manual_seed(0)
    lm = tf.AutoModelForCausalLM.from_config(lm_config("llama-tiny", V, 32, 0.5))
    with torch.no_grad():
        lm.get_output_embeddings().weight[:V // 2] *= 16
    return attach_lm_exits(lm, [1, 4], loss=FusedLinearMSDLoss(**loss_kw) if loss_kw else None)


def _padded_batch(b=4):
    """Right-padded rows of different lengths: pads are masked out and labelled -100; row 1 also masks a prompt.
    Rows 0 and 1 draw tokens from the first half of the vocabulary, rows 2 and 3 from the second; _model makes
    the head's rows of the first half 16x larger, so the rows' losses differ and the reductions can be told apart."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V // 2, (b, T), generator=g)
    x[2:] += V // 2
    mask = torch.ones_like(x)
    for r, n in enumerate([T, 7, 10, 4][:b]):
        mask[r, n:] = 0
    labels = x.masked_fill(mask == 0, -100)
    labels[1, :3] = -100
    return x, mask, labels


def test_labels_give_hf_own_loss_at_the_last_exit_and_honour_num_items_in_batch():
    m = _model(alpha=0.0, exit_weights=[0.0, 0.0, 1.0])  # only the last exit's CE: HF's own loss
    x, mask, labels = _padded_batch()
    ours, hf = m(x, mask, labels=labels), m.lm(input_ids=x, attention_mask=mask, labels=labels)
    torch.testing.assert_close(ours.loss, hf.loss, rtol=1e-5, atol=1e-6)
    assert ours.exit_ce.shape == (3,) and ours["loss"] is ours.loss
    n = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(m(x, mask, labels=labels, num_items_in_batch=3 * n).loss,
                               m.lm(input_ids=x, attention_mask=mask, labels=labels, num_items_in_batch=3 * n).loss,
                               rtol=1e-5, atol=1e-6)
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    torch.testing.assert_close(m(x, mask, shift_labels=shifted).loss, ours.loss)


def test_the_default_loss_is_msd_over_the_exits_through_the_fused_linear_loss():
    from msd_fast.loss import fused_linear_msd_loss

    m = _model()
    x, mask, labels = _padded_batch()
    out = m(x, mask)
    target = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    want = fused_linear_msd_loss(out.hidden, out.weight, target)
    got = m(x, mask, labels=labels)
    torch.testing.assert_close(got.loss, want)
    got.loss.backward()
    assert all(p.grad is not None for p in m.trunk_layers[0].parameters())


@pytest.mark.parametrize("kw,error,message", [
    (dict(labels=torch.zeros(4, T)), TypeError, "labels: expected an integer tensor of token ids"),
    (dict(labels=torch.zeros(4, T + 1, dtype=torch.long)), ValueError, "labels: expected the shape of input_ids"),
    (dict(labels=torch.zeros(4, T, dtype=torch.long), shift_labels=torch.zeros(4, T, dtype=torch.long)),
     ValueError, "pass one of them"),
    (dict(labels=torch.zeros(4, T, dtype=torch.long), last_only=True), ValueError, "last_only: the loss"),
])
def test_bad_labels_are_one_clear_error(kw, error, message):
    m = _model()
    x, mask, _ = _padded_batch()
    with pytest.raises(error, match=message):
        m(x, mask, **kw)


def test_attach_lm_exits_refuses_a_loss_that_is_not_the_fused_linear_loss():
    need_transformers()
    from msd_fast import MSDLoss

    from msd_fast.lm import attach_lm_exits
    from msd_fast.lm.models import create_lm

    with pytest.raises(TypeError, match="loss: expected a msd_fast.loss.FusedLinearMSDLoss"):
        attach_lm_exits(create_lm("llama-tiny", V, 32, 0.5).lm, [1, 4], loss=MSDLoss())


def test_gradient_checkpointing_gives_the_same_gradients():
    x, mask, labels = _padded_batch()
    grads = []
    for ckpt in (False, True):
        m = _model()
        m.train()
        if ckpt:
            m.activation_checkpointing_enable()
        m(x, mask, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_hf_trainer_trains_it_unchanged_with_accumulation_and_padding(tmp_path):
    """One optimizer step of 2 micro-batches of uneven padding: the Trainer's logged loss is the token mean
    over the whole step (num_items_in_batch honoured), not the mean of the two micro-batch means."""
    tf = need_transformers()
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install accelerate)")
    m = _model()
    x, mask, labels = _padded_batch()
    with torch.no_grad():
        m.eval()
        want = m(x, mask, labels=labels).loss.item()  # all 4 rows at once: the mean over every kept token
        for pair in ((0, 1), (0, 2), (0, 3)):  # every way the Trainer's shuffle may pair the rows
            rest = [r for r in range(4) if r not in pair]
            means = [m(x[list(p)], mask[list(p)], labels=labels[list(p)]).loss.item() for p in (pair, rest)]
            assert abs(sum(means) / 2 - want) > 2e-4 * want  # the mean of micro-batch means is another number
    fields = tf.TrainingArguments.__dataclass_fields__  # the flag's name changed in transformers 5
    checkpointing = {"activation_checkpointing" if "activation_checkpointing" in fields else
                     "gradient_checkpointing": True}
    rows = [{"input_ids": x[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(4)]
    args = tf.TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2,
                                gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-3, logging_steps=1,
                                report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                                dataloader_num_workers=0, seed=0, **checkpointing)
    trainer = tf.Trainer(model=m, args=args, train_dataset=rows)
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and logged[0] == pytest.approx(want, rel=1e-5)
    assert logged[1] < logged[0]  # the second step, after one update, on the same 4 rows


def test_hf_trainer_trains_a_lora_adapter_on_the_trunk(tmp_path):
    """PEFT's LoRA injected into the attached model's trunk: the Trainer moves the adapters only, and the loss
    falls; the exits' loss reaches the adapters through the fused linear loss's hidden-state gradients."""
    tf = need_transformers()
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pip install accelerate)")
    peft = pytest.importorskip("peft", reason="the LoRA test needs PEFT (pip install peft)")
    m = _model()
    peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 lora_dropout=0.0), m.lm)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    x, mask, labels = _padded_batch()
    rows = [{"input_ids": x[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(4)]
    args = tf.TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=4, max_steps=4,
                                learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no",
                                use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = tf.Trainer(model=m, args=args, train_dataset=rows)
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert logged[-1] < logged[0]
    moved = {n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= trainable


def _saved(tmp_path, heads="per_exit"):
    from msd_fast.lm import attach_lm_exits
    from msd_fast.lm.models import create_lm
    from msd_fast.loss import FusedLinearMSDLoss

    need_transformers()
    torch.manual_seed(0)
    loss = FusedLinearMSDLoss(alpha=0.5, temperature=2.0, teacher="last", exit_weights=[0.5, 1.0, 1.5])
    m = attach_lm_exits(create_lm("llama-tiny", V, 32, 0.5).lm, [1, 4], heads=heads, loss=loss)
    with torch.no_grad():
        for p in m.exit_heads:
            p.add_(torch.randn_like(p) * 0.1)  # trained heads differ from the model's
    m.save_pretrained(tmp_path / "saved")
    return m, tmp_path / "saved"


@pytest.mark.parametrize("heads", ["shared", "per_exit"])
def test_save_pretrained_round_trips_the_exits_and_loads_in_plain_transformers(tmp_path, heads):
    tf = need_transformers()
    from msd_fast.lm import load_lm_exits

    m, d = _saved(tmp_path, heads)
    back = load_lm_exits(d)
    x, mask, labels = _padded_batch()
    m.eval()
    assert back.exit_layers == m.exit_layers and back.heads == heads
    assert (back.exit_loss.alpha, back.exit_loss.teacher, back.exit_loss.exit_weights) == (0.5, "last", [0.5, 1.0, 1.5])
    with torch.no_grad():
        torch.testing.assert_close(back(x, mask, labels=labels).loss, m(x, mask, labels=labels).loss)
        plain = tf.AutoModelForCausalLM.from_pretrained(str(d))  # the base model, exits' files ignored
        torch.testing.assert_close(plain(input_ids=x, attention_mask=mask).logits,
                                   m.lm(input_ids=x, attention_mask=mask).logits)


def _resign(d, name):
    import hashlib
    import json

    meta = json.loads((d / "msd_exits.json").read_text())
    meta["sha256"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    (d / "msd_exits.json").write_text(json.dumps(meta))


def _edit_record(d, edit):
    import json

    meta = json.loads((d / "msd_exits.json").read_text())
    edit(meta)
    (d / "msd_exits.json").write_text(json.dumps(meta))


def _flip(d, name="model.safetensors"):
    b = bytearray((d / name).read_bytes())
    b[-3] ^= 1
    (d / name).write_bytes(bytes(b))


def _auto_map(d):
    import json

    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_evil.py").write_text("raise SystemExit('ran the folder code')\n")
    _resign(d, "config.json")


def _only_bin(d):
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


@pytest.mark.parametrize("damage,message", [
    (_flip, "its SHA-256 does not match"),
    (lambda d: _edit_record(d, lambda m: m["sha256"].pop("model.safetensors")), "has no SHA-256 for it"),
    (lambda d: _flip(d, "exit_heads.safetensors"), "its SHA-256 does not match"),
    (_auto_map, "has an auto_map"),
    (_only_bin, "msd_fast reads LM weights from safetensors only"),
    (lambda d: _edit_record(d, lambda m: m["loss"].update(alpha="0.3")), "'alpha' is '0.3', of the wrong type"),
    (lambda d: _edit_record(d, lambda m: m["loss"].update(temperature=-1.0)), "msd_exits.json: temperature"),
    (lambda d: _edit_record(d, lambda m: m.update(exit_layers=[9])), "msd_exits.json: exit_layers"),
    (lambda d: (d / "msd_exits.json").unlink(), "msd_exits.json"),
])
def test_a_damaged_saved_folder_is_refused_in_one_line_and_runs_no_code(tmp_path, damage, message):
    from msd_fast.lm import load_lm_exits

    _, d = _saved(tmp_path)
    damage(d)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_lm_exits(d)
