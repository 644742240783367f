"""Exits on any backbone (msd_fast.models.chain through attach_exits): torchvision ConvNeXt, EfficientNet,
MobileNetV3, RegNet, Swin and ViT (small configurations), timm models when the optional extra is installed,
and a network whose trunk the user names. For each: the final exit equals the backbone's own forward, every
exit trains with the MSD loss, and EarlyExit takes them."""
import pytest
import torch
import torchvision.models as tvm
from torchvision.models.convnext import CNBlockConfig

from msd_fast import EarlyExit, attach_exits, msd_loss


def _torchvision(name):
    if name == "convnext":
        cfg = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)]
        return tvm.ConvNeXt(cfg, num_classes=5), 64
    if name == "swin":
        return tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                   window_size=[2, 2], num_classes=5), 64
    if name == "vit":
        return tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=16,
                                     mlp_dim=32, num_classes=5), 32
    return getattr(tvm, name)(num_classes=5), 64


def _check(net, size, num_exits):
    torch.manual_seed(0)
    x = torch.randn(3, 3, size, size)
    net.eval()
    multi = attach_exits(net).eval()
    assert multi.num_exits == num_exits
    with torch.no_grad():
        out = multi(x)
        torch.testing.assert_close(out.logits[-1], net(x), rtol=1e-5, atol=1e-5)   # the backbone's own head
    D = out.features[-1].shape[1]
    assert all(f.shape == (3, D) for f in out.features) and all(z.shape == (3, 5) for z in out.logits)
    multi.train()
    out = multi(x)
    loss = msd_loss(out.logits, torch.tensor([0, 3, 4]), out.features, beta=0.1)
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None for p in multi.branches.parameters())
    multi.eval()
    pred, idx = EarlyExit(multi, [float("inf")] * (num_exits - 1) + [0.0], preprocess=None)(x)
    assert (idx == num_exits - 1).all() and torch.equal(pred, net(x).argmax(-1))
    pred, idx = EarlyExit(multi, [0.0] * num_exits, preprocess=None)(x)
    assert (idx == 0).all() and torch.equal(pred, multi(x).logits[0].argmax(-1))
    return multi


@pytest.mark.parametrize("name,num_exits", [("convnext", 4), ("efficientnet_b0", 4), ("mobilenet_v3_small", 4),
                                            ("regnet_x_400mf", 4), ("swin", 4), ("vit", 3)])
def test_torchvision_families_get_exits_and_keep_their_own_head(name, num_exits):
    net, size = _torchvision(name)
    _check(net, size, num_exits)


@pytest.mark.parametrize("name,size", [("convnext_atto", 64), ("efficientnet_b0", 64), ("regnetx_002", 64),
                                       ("mobilenetv3_small_050", 64), ("swin_tiny_patch4_window7_224", 224)])
def test_timm_models_get_exits_at_their_feature_info_stages(name, size):
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    net = timm.create_model(name, num_classes=5, drop_rate=0.2)
    torch.manual_seed(0)
    net.eval()
    multi = attach_exits(net, input_size=(3, size, size)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(multi(x).logits[-1], net(x), rtol=1e-5, atol=1e-5)
    assert multi.exit_after == tuple(f["module"] for f in net.feature_info[:-1] if f["reduction"] >= 4)


def test_a_timm_model_whose_children_are_not_its_forward_is_refused():
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    net = timm.create_model("vit_tiny_patch16_224", num_classes=5)
    with pytest.raises(ValueError, match="do not reproduce its forward_features.*trunk="):
        attach_exits(net, input_size=(3, 224, 224))


class _Head(torch.nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, x):
        f = x.mean((2, 3))
        return self.fc(f), f


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.b = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())
        self.c = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.c(self.b(self.a(x))).mean((2, 3)))


def test_any_chain_network_with_a_named_trunk():
    net = _Net()
    multi = attach_exits(net, exit_after=["a", "b"], trunk=["a", "b", "c"], head=_Head(net.fc), input_size=(3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(multi(x).logits[-1], net(x))
    assert multi.num_exits == 3 and multi.cost((3, 16, 16))["exit_flops"][0] > 0
    with pytest.raises(ValueError, match="the backbone has no module 'd'"):
        attach_exits(net, exit_after=["a"], trunk=["a", "d"], head=_Head(net.fc), input_size=(3, 16, 16))
    with pytest.raises(ValueError, match="exit_after: distinct trunk pieces in order"):
        attach_exits(net, exit_after=["b", "a"], trunk=["a", "b", "c"], head=_Head(net.fc), input_size=(3, 16, 16))
    with pytest.raises(ValueError, match="_Net is not a family msd_fast cuts by itself.*trunk="):
        attach_exits(net)
    with pytest.raises(ValueError, match="create it with num_classes=7"):
        attach_exits(_torchvision("mobilenet_v3_small")[0], num_classes=7)
