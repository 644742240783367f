"""Multi-exit models: outputs, gradients, early-exit prefix, channels_last, autocast, compile, costs."""
import pytest
import torch
import torch.utils.flop_counter
import torchvision

from msd_fast import msd_loss
from msd_fast.models import MultiExitOutput, create_model, list_models

SMALL = dict(width=0.125)
EXPECTED_EXITS = {name: 4 for name in list_models()} | {"msdnet1": 5, "msdnet2": 5}


def _small(name, **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes=7, in_channels=1, **{**SMALL, **kw})


@pytest.mark.parametrize("name", list_models())
def test_outputs_shapes_and_gradients(name):
    model = _small(name)
    x, y = torch.randn(3, 1, 16, 16), torch.randint(0, 7, (3,))
    out = model(x)
    assert isinstance(out, MultiExitOutput)
    assert len(out.logits) == len(out.features) == EXPECTED_EXITS[name] == model.num_exits
    for z, f in zip(out.logits, out.features):
        assert z.shape == (3, 7)
        assert f.shape == (3, model.feature_dim)
    msd_loss(out.logits, y, out.features, beta=0.1).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "msdnet1", "msdnet2"])
def test_partial_forward_is_prefix_and_channels_last_matches(name):
    model = _small(name).eval()
    x = torch.randn(2, 1, 20, 20)
    with torch.no_grad():
        full = model(x)
        for k in range(1, model.num_exits + 1):
            part = model(x, upto=k)
            assert len(part.logits) == k
            for a, b in zip(part.logits + part.features, full.logits[:k] + full.features[:k]):
                assert torch.equal(a, b)
        cl_model = _small(name).eval().to(memory_format=torch.channels_last)
        cl = cl_model(x.to(memory_format=torch.channels_last))
    for a, b in zip(cl.logits + cl.features, full.logits + full.features):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="upto must be in"):
        model(x, upto=0)


@pytest.mark.parametrize("name", ["resnet18", "msdnet1"])
def test_autocast_bf16(name):
    model = _small(name)
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 7, (2,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = msd_loss(out.logits, y, out.features)
    assert out.logits[0].dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("name", ["resnet18", "msdnet1"])
def test_compile_fullgraph_no_graph_break(name):
    model = _small(name).eval()
    x = torch.randn(2, 1, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph raises on any graph break
    with torch.no_grad():
        got, want = compiled(x), model(x)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b)


def test_resnet18_backbone_is_standard_cifar_resnet18():
    model = create_model("resnet18", num_classes=100)
    backbone = sum(p.numel() for m in model.backbone_modules() for p in m.parameters())
    ref = torchvision.models.resnet18(num_classes=100)  # ImageNet stem -> CIFAR stem: 3x3 conv, no max-pool
    ref.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    assert backbone == sum(p.numel() for p in ref.parameters()) == 11_220_132
    assert model.num_parameters() > backbone  # the three branches and their classifiers


@pytest.mark.parametrize("name", ["msdnet1", "msdnet2"])
def test_msdnet_costs(name):
    model = create_model(name, num_classes=100)
    assert model.num_exits == 5 and model.feature_dim == 128
    flops = model.exit_flops((3, 32, 32))
    assert len(flops) == 5 and all(b > a for a, b in zip(flops, flops[1:]))
    assert model.steps == ([1, 2, 3, 4, 5] if name == "msdnet1" else [3, 3, 3, 3, 3])


def test_resnet_flops_increase_and_last_exit_is_full_forward():
    model = _small("resnet18")
    flops = model.exit_flops((1, 16, 16))
    assert all(b > a for a, b in zip(flops, flops[1:]))
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 1, 16, 16))
    assert flops[-1] == counter.get_total_flops()


def test_msdnet_general_constructor_seven_exits():
    model = create_model("msdnet1", num_classes=10, width=0.25, blocks=7, base=4, step=1, step_mode="even",
                         prune="min")
    out = model(torch.randn(2, 3, 32, 32))
    assert len(out.logits) == 7


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        create_model("vgg", 10)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", 1)
