"""attach_lm_exits on tiny Hugging Face models built from configs (random init, nothing downloaded): the
deepest exit is the model's own output, at alpha = 0 its CE is the model's own loss, the exits' loss through
the fused linear loss equals the materialised one, and bad inputs are refused by name."""
import pytest
import torch

from lm_helpers import need_transformers

FAMILIES = ("llama-tiny", "qwen2-tiny", "gpt2-tiny")


def _model(name, vocab=97, seq=24, heads="shared", layers=()):
    need_transformers()
    from msd_fast.lm.models import create_lm

    torch.manual_seed(0)
    return create_lm(name, vocab, seq, width=0.5, exit_layers=layers, heads=heads).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_deepest_exit_is_the_models_own_logits_and_loss(name):
    from msd_fast.loss import fused_linear_msd_loss

    m = _model(name)
    x = torch.randint(0, 97, (3, 17))
    ref = m.lm(input_ids=x, labels=x)
    out = m(x)
    assert len(out.hidden) == m.num_exits == 4 and m.exit_layers == (1, 3, 5, 7)
    torch.testing.assert_close(m.logits(out, -1), ref.logits, rtol=0, atol=0)
    target = torch.cat([x[:, 1:], torch.full((3, 1), -100)], 1)  # HF shifts labels; the last position has none
    loss, terms = fused_linear_msd_loss(out.hidden, out.weight, target, alpha=0.0, beta=0.0, return_terms=True)
    torch.testing.assert_close(terms.ce[-1], ref.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, terms.ce.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_padded_batch_takes_the_attention_mask_like_the_model(name):
    from msd_fast.loss import fused_linear_msd_loss

    m = _model(name)
    x = torch.randint(0, 97, (2, 10))
    mask = torch.ones_like(x)
    mask[0, :4] = 0  # left padding, as HF tokenizers pad for generation
    labels = x.masked_fill(mask == 0, -100)
    ref = m.lm(input_ids=x, attention_mask=mask, labels=labels)
    out = m(x, attention_mask=mask)
    torch.testing.assert_close(m.logits(out, -1), ref.logits, rtol=0, atol=0)
    assert not torch.allclose(m(x).hidden[0][0], out.hidden[0][0])  # the mask reaches the shallow exits too
    target = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], 1)
    _, terms = fused_linear_msd_loss(out.hidden, out.weight, target, alpha=0.0, beta=0.0, return_terms=True)
    torch.testing.assert_close(terms.ce[-1], ref.loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_shallow_exits_are_the_normed_layer_outputs(name):
    m = _model(name)
    x = torch.randint(0, 97, (2, 9))
    hs = m.trunk(input_ids=x, output_hidden_states=True).hidden_states
    out = m(x)
    for n, j in enumerate(m.exit_layers[:-1]):
        torch.testing.assert_close(out.hidden[n], m.norm(hs[j + 1]))


@pytest.mark.parametrize("heads", ["shared", "per_exit"])
def test_fused_loss_on_exits_matches_the_materialised_msd_loss(heads):
    from msd_fast.loss import fused_linear_msd_loss, msd_loss

    m = _model("llama-tiny", heads=heads, layers=(2, 5))
    x = torch.randint(0, 97, (2, 11))
    y = torch.randint(0, 97, (2, 11))
    out = m(x)
    loss = fused_linear_msd_loss(out.hidden, out.weight, y, alpha=0.5, beta=0.1, chunk_tokens=7)
    g = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    out2 = m(x)
    z = [m.logits(out2, n) for n in range(m.num_exits)]
    ref = msd_loss(z, y, out2.hidden, alpha=0.5, beta=0.1, backend="reference")
    g2 = torch.autograd.grad(ref, list(m.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_per_exit_heads_start_from_the_shared_head_and_train_apart():
    m = _model("gpt2-tiny", heads="per_exit")
    W = m.lm.get_output_embeddings().weight
    assert len(m.exit_heads) == m.num_exits - 1
    for p in m.exit_heads:
        torch.testing.assert_close(p, W)
        assert p.data_ptr() != W.data_ptr()
    out = m(torch.randint(0, 97, (1, 5)))
    assert isinstance(out.weight, list) and out.weight[-1] is W


def test_exit_layers_are_checked_and_the_last_layer_added():
    need_transformers()
    from msd_fast import attach_lm_exits
    from msd_fast.lm.models import lm_config
    from msd_fast.lm.hf import transformers

    lm = transformers().AutoModelForCausalLM.from_config(lm_config("qwen2-tiny", 50, 16, 0.5))
    assert attach_lm_exits(lm, [0, 4]).exit_layers == (0, 4, 7)
    assert attach_lm_exits(lm, num_exits=2).exit_layers == (3, 7)
    for bad in ([], [7], [3, 3], [5, 2], [8], [-1]):
        with pytest.raises(ValueError, match="exit_layers"):
            attach_lm_exits(lm, bad)
    with pytest.raises(ValueError, match="heads must be one of"):
        attach_lm_exits(lm, [2], heads="each")
    with pytest.raises(ValueError, match="Hugging Face causal LM"):
        attach_lm_exits(torch.nn.Linear(3, 3), [1])
