"""Early-exit greedy decoding: with no early exit it is the full model's greedy decoding token for token, and
when tokens do exit early the deferred KV recomputation leaves the cache exactly as full depth would (the
tokens that go to the last layer get the full model's logits for the sequence so far)."""
import pytest
import torch

from lm_helpers import need_transformers


def _model(name):
    need_transformers()
    from msd_fast.lm.models import create_lm

    torch.manual_seed(1)
    return create_lm(name, 120, 64, width=0.5).eval()


def _greedy(m, prompt, k):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(k):
            seq.append(int(m.lm(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("name", ["llama-tiny", "qwen2-tiny", "gpt2-tiny"])
def test_no_early_exit_is_full_greedy_decoding(name):
    from msd_fast.lm.decode import early_exit_generate

    m = _model(name)
    prompt = torch.randint(0, 120, (7,)).tolist()
    out = early_exit_generate(m, prompt, 12, threshold=1.5)
    assert out.tokens == _greedy(m, prompt, 12)
    # after the prompt: 11 tokens through 8 layers, one row per call, only the last head applied
    assert set(out.layers_used) == {8} and out.layer_rows == out.layer_calls == 8 * 11
    assert out.head_checks == 11 and out.seconds > 0 and out.prefill_seconds > 0


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_tokens_after_early_exits_see_the_full_depth_cache(name):
    from msd_fast.lm.decode import early_exit_generate

    m = _model(name)
    prompt = torch.randint(0, 120, (7,)).tolist()
    conf = []  # the first exit's confidence along the full-depth decode: a threshold between its values mixes
    full = early_exit_generate(m, prompt, 24, threshold=1.5)
    seq = prompt + full.tokens
    with torch.no_grad():
        out = m(torch.tensor([seq]))
        for n in range(m.num_exits - 1):
            conf.append(m.logits(out, n)[0, len(prompt):].softmax(-1).amax(-1))
    th = torch.cat(conf).median().item()
    out = early_exit_generate(m, prompt, 24, threshold=th, keep_full_logits=True)
    assert 0 < len(out.full_logits) < len(out.exit_index), out.exit_index
    assert len(set(out.exit_index)) >= 2
    seq = prompt + out.tokens
    with torch.no_grad():
        ref = m.lm(input_ids=torch.tensor([seq])).logits[0]
    for pos, logits in out.full_logits.items():
        torch.testing.assert_close(logits, ref[pos], rtol=1e-4, atol=1e-5)
    shallow = [u for u, n in zip(out.layers_used, out.exit_index) if n < m.num_exits - 1]
    assert shallow and max(shallow) < 8
    # the catch-up rides along: fewer layer calls than full depth, never more rows
    assert out.layer_calls < full.layer_calls and out.layer_rows <= full.layer_rows
    assert out.head_checks == sum(n + 1 for n in out.exit_index)


def test_threshold_zero_leaves_at_the_first_exit_and_bad_calls_are_refused():
    from msd_fast.lm.decode import early_exit_generate

    m = _model("qwen2-tiny")
    out = early_exit_generate(m, [3, 4, 5], 6, threshold=0.0)
    assert set(out.exit_index) == {0} and set(out.layers_used) == {m.exit_layers[0] + 1}
    with pytest.raises(ValueError, match="prompt"):
        early_exit_generate(m, [], 3)
    with pytest.raises(ValueError, match=r"exits: expected exit indices in \[0, 3\]"):
        early_exit_generate(m, [1], 3, exits=[4])
    assert m.training is False


def test_checking_fewer_exits_emits_only_from_them():
    from msd_fast.lm.decode import early_exit_generate

    m = _model("llama-tiny")
    prompt = [3, 4, 5, 6]
    every = early_exit_generate(m, prompt, 10, threshold=0.0)
    only = early_exit_generate(m, prompt, 10, threshold=0.0, exits=[1])
    assert set(every.exit_index) == {0} and set(only.exit_index) == {1}
    assert set(only.layers_used) == {m.exit_layers[1] + 1} and only.head_checks == len(only.exit_index)
    # an exit that never passes the threshold costs a check and emits nothing: the last exit emits, at full depth
    none = early_exit_generate(m, prompt, 10, threshold=1.0 - 1e-9, exits=[2])
    full = early_exit_generate(m, prompt, 10, threshold=2.0)
    assert none.tokens == full.tokens and none.head_checks == 2 * len(none.exit_index)
    with pytest.raises(TypeError, match="LMExits"):
        early_exit_generate(m.lm, [1], 3)


def test_early_exit_curve_picks_the_first_confident_exit():
    from msd_fast.lm.evaluate import early_exit_curve

    conf = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3], [0.1, 0.1, 0.1]])
    nll = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    pred = torch.tensor([[1, 2, 1], [3, 4, 4], [5, 6, 7]])
    rows = early_exit_curve(conf, nll, pred, [2, 4, 8], [0.7, 1.1])
    assert rows[0]["avg_layers"] == pytest.approx((2 + 4 + 8) / 3)
    assert rows[0]["ppl"] == pytest.approx(torch.tensor([1.0, 5.0, 9.0]).mean().exp().item())
    assert rows[0]["agreement"] == pytest.approx(100.0) and rows[0]["exit_share"] == pytest.approx([1 / 3] * 3)
    assert rows[1]["avg_layers"] == 8 and rows[1]["ppl"] == pytest.approx(torch.tensor(6.0).exp().item())


@pytest.mark.parametrize("name,draft_exit,k", [("llama-tiny", 0, 3), ("qwen2-tiny", 1, 1), ("gpt2-tiny", 2, 5),
                                               ("llama-tiny", 1, 4)])
def test_self_speculative_decoding_is_full_greedy_decoding(name, draft_exit, k):
    from msd_fast.lm.speculative import self_speculative_generate

    m = _model(name)
    prompt = torch.randint(0, 120, (6,)).tolist()
    out = self_speculative_generate(m, prompt, 15, draft_exit=draft_exit, draft_tokens=k)
    assert out.tokens == _greedy(m, prompt, 15)
    assert len(out.exit_index) == len(out.layers_used) == 14 and set(out.layers_used) == {8}
    assert set(out.exit_index) <= {draft_exit, m.num_exits - 1}


def test_self_speculative_decoding_accepts_drafts_the_deeper_layers_agree_with():
    from msd_fast.lm.speculative import self_speculative_generate

    m = _model("llama-tiny")
    with torch.no_grad():  # layers after the first exit's become the identity: its drafts are the full model's
        for layer in m.trunk_layers[m.exit_layers[0] + 1:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    prompt = [5, 6, 7]
    out = self_speculative_generate(m, prompt, 13, draft_exit=0, draft_tokens=4)
    assert out.tokens == _greedy(m, prompt, 13) and set(out.exit_index) == {0}
    # 12 tokens after the first, 4 per round: 3 rounds of 4 drafts (2 layers + a head each), 6 deeper layers and
    # one head per round on 4 rows
    assert out.layer_calls == 3 * (4 * 2 + 6) and out.head_checks == 3 * (4 + 1) and out.layer_rows == 3 * (8 + 24)
    stop = out.tokens[3]
    early = self_speculative_generate(m, prompt, 13, draft_exit=0, draft_tokens=4, stop_token=stop)
    assert early.tokens == out.tokens[:out.tokens.index(stop) + 1]
    for bad, what in ((dict(draft_exit=3), "draft_exit: expected an exit index in \\[0, 2\\]"),
                      (dict(draft_exit=-1), "draft_exit: expected an exit index in \\[0, 2\\]"),
                      (dict(draft_tokens=0), "draft_tokens: expected an int >= 1")):
        with pytest.raises(ValueError, match=what):
            self_speculative_generate(m, prompt, 3, **bad)
