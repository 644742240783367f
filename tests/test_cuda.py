"""Everything where a GPU changes the code path, on CUDA: the compiled (not interpreted) Triton loss against a
float64 reference over a random grid (B = 1, huge C, extreme logits, fp32/bf16/fp16, both teachers, with and
without features), opcheck, torch.compile(fullgraph=True), CUDA-graph capture, bitwise determinism, the CUDA
reduction, the models and EarlyExit, and a short Trainer run with the GPU defaults (compile, bf16,
channels-last, data on the GPU), its checkpoint, resume and evaluation.

Skipped with the reason when no GPU is present. On a GPU run with TRITON_INTERPRET unset or 0
(scripts/gpu_check.sh does): under the interpreter the Triton kernels would not be compiled.
"""
import json
import os
import random

import pytest
import torch

from msd_fast import _ext, msd_loss
from msd_fast.loss.fused import reduce_partials
from msd_fast.models import create_model
import grad_scaling_checks as checks

HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: these tests need a GPU (run scripts/gpu_check.sh there)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1",
                       reason="TRITON_INTERPRET=1 would interpret, not compile, the Triton kernels on the GPU"),
]
DEV = "cuda"
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


def _inputs(N, B, C, D, dtype, scale=3.0, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = (scale * torch.randn(N, B, C, generator=g)).to(DEV, dtype)
    f = torch.randn(N, B, D, generator=g).to(DEV, dtype) if D else None
    y = torch.randint(0, C, (B,), generator=g).to(DEV)
    return z, y, f


def _loss_and_grads(backend, z, y, f, teacher, dtype=None, temperature=2.5):
    zz = z.detach().clone().to(dtype or z.dtype).requires_grad_()
    ff = None if f is None else f.detach().clone().to(dtype or f.dtype).requires_grad_()
    loss = msd_loss(zz, y, ff, alpha=0.6, temperature=temperature, beta=0.3, teacher=teacher, backend=backend)
    grads = torch.autograd.grad(loss, [t for t in (zz, ff) if t is not None])
    return loss, grads


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _grid(count=40, seed=0):
    rng = random.Random(seed)
    cases = [(2, 1, 2, 0), (8, 1, 131072, 64), (4, 1, 100, 1), (3, 16, 160, 16), (5, 4096, 10, 128)]
    while len(cases) < count:
        cases.append((rng.randint(2, 8), rng.choice([1, 2, 7, 16, 33, 256, 1024]),
                      rng.choice([2, 10, 100, 1000, 4097, 32000]), rng.choice([0, 1, 13, 64, 512])))
    return cases


@pytest.mark.parametrize("tau", [2.5, 3.0])
def test_extreme_and_non_finite_logits(tau):
    z, y, f = _inputs(4, 8, 1000, 32, torch.float32, scale=300.0)
    loss, grads = _loss_and_grads("triton", z, y, f, "all", temperature=tau)
    ref, ref_grads = _loss_and_grads("reference", z, y, f, "all", dtype=torch.float64, temperature=tau)
    assert _rel_err(loss, ref) < 1e-5 and all(_rel_err(g, r) < 1e-4 for g, r in zip(grads, ref_grads))
    for bad in (float("nan"), float("inf")):
        zb = z.clone()
        zb[1, 3, 7] = bad
        assert not torch.isfinite(msd_loss(zb, y, f, backend="triton"))


@pytest.mark.skipif(not (_ext.available() and _ext.has_cuda()), reason="extension built without CUDA sources")
def test_cuda_reduction_is_repeatable_and_matches_float64():
    parts = torch.rand(3, 8, 1_000_003, device=DEV) * 10
    w = torch.tensor([0.3, 0.7, 0.05], device=DEV)
    a, ta = torch.ops.msd_fast.reduce_exit_losses(parts, w)
    b, tb = torch.ops.msd_fast.reduce_exit_losses(parts, w)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    ref = parts.double().mean(2)
    torch.testing.assert_close(a.double(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(ta.double(), (w.double()[:, None] * ref).sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(reduce_partials(parts, w)[0], a)


def _step_fn(heads, y):
    def step(x):
        feats = [torch.tanh(x * (i + 1)) for i in range(len(heads))]
        return msd_loss([h(f) for h, f in zip(heads, feats)], y, feats, backend="triton", validate=False)
    return step


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    heads = torch.nn.ModuleList([torch.nn.Linear(64, 100) for _ in range(4)]).to(DEV)
    x, y = torch.randn(32, 64, device=DEV), torch.randint(0, 100, (32,), device=DEV)
    step = _step_fn(heads, y)
    eager = step(x)
    eager.backward()
    g_eager = [p.grad.clone() for p in heads.parameters()]
    heads.zero_grad()
    comp = torch.compile(step, fullgraph=True)(x)
    comp.backward()
    # the loss operator is the same kernel; inductor's Linear/tanh may round differently in the last bits
    torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)
    for a, p in zip(g_eager, heads.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_cuda_graph_capture_replays_the_loss_and_its_gradients():
    z, y, f = _inputs(4, 64, 1000, 128, torch.bfloat16)
    z.requires_grad_()
    f.requires_grad_()
    beta = torch.tensor(0.05, device=DEV)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (compiles the kernel) off the default stream, as capture requires
        for _ in range(2):
            z.grad = f.grad = None
            msd_loss(z, y, f, beta=beta, backend="triton", validate=False).backward()
    torch.cuda.current_stream().wait_stream(s)
    z.grad = f.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = msd_loss(z, y, f, beta=beta, backend="triton", validate=False)
        static_loss.backward()
    for scale in (1.0, 0.5):
        with torch.no_grad():
            z.mul_(scale)
        graph.replay()
        torch.cuda.synchronize()
        zz, ff = z.detach().clone().requires_grad_(), f.detach().clone().requires_grad_()
        eager = msd_loss(zz, y, ff, beta=beta, backend="triton")
        eager.backward()
        assert torch.equal(static_loss, eager)
        assert torch.equal(z.grad, zz.grad) and torch.equal(f.grad, ff.grad)


def test_forward_and_backward_are_bitwise_deterministic():
    z, y, f = _inputs(6, 512, 1000, 256, torch.bfloat16)
    first = _loss_and_grads("triton", z, y, f, "all")
    for _ in range(5):
        again = _loss_and_grads("triton", z, y, f, "all")
        assert torch.equal(again[0], first[0])
        assert all(torch.equal(a, b) for a, b in zip(again[1], first[1]))


@pytest.mark.parametrize("name", ["resnet18", "msdnet1"])
def test_models_and_early_exit_on_cuda(name):
    from msd_fast.evaluate.early_exit import simulate
    from msd_fast.evaluate.inference import EarlyExit

    torch.manual_seed(0)
    model = create_model(name, 10, 3, 0.25).to(DEV).eval()
    x = torch.randn(64, 3, 32, 32, device=DEV)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 maths on both devices
    try:
        with torch.no_grad():
            out = model(x)
            cpu_model = create_model(name, 10, 3, 0.25)
            cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
            cpu_out = cpu_model.eval()(x.cpu())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for a, b in zip(out.logits, cpu_out.logits):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)
    probs = torch.stack([z.float().softmax(-1) for z in out.logits]).cpu()
    thr = [0.6] * (model.num_exits - 1) + [0.0]
    pred, idx = EarlyExit(model, thr, preprocess=None)(x)
    sim = simulate(probs, thr, [1] * model.num_exits)
    assert torch.equal(pred.cpu(), sim.predictions) and torch.equal(idx.cpu(), sim.exit_index)


def test_trainer_with_gpu_defaults_checkpoint_resume_and_evaluate(tmp_path):
    from msd_fast.checkpoint import load_checkpoint
    from msd_fast.train.config import resolve_config
    from msd_fast.evaluate.cli import main as evaluate_main
    from msd_fast.train.trainer import Trainer

    base = ["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--batch-size", "64", "--epochs", "2",
            "--no-progress", "--tensorboard", "false", "--out-dir", str(tmp_path), "--device", "cuda"]
    full = Trainer(resolve_config(base + ["--run-name", "full"]))
    assert full.speed_report() == {"device": "cuda", "amp": "bf16", "channels_last": True, "compile": True, "cuda_graph": True}
    assert full.batches.images.is_cuda  # the data live on the GPU
    res = full.fit()
    assert res["last"]["test_acc"][-1] > 30
    spe = full.steps_per_epoch
    Trainer(resolve_config(base + ["--run-name", "cut", "--max-steps", str(spe + 3)])).fit()  # inside epoch 2
    resumed = Trainer(resolve_config(["--resume", str(tmp_path / "cut"), "--max-steps", "0"]))
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 2 * spe)
    # cuDNN's backward kernels are not bitwise deterministic, so the resumed run is compared by its accuracy
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert abs(cut["last"]["test_acc"][-1] - res["last"]["test_acc"][-1]) < 5.0
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(tmp_path / "full"), "--out", str(out), "--device", "cuda",
                          "--amp", "bf16", "--batch-size", "256"]) == 0
    r = json.loads((out / "results.json").read_text())["results"][0]
    assert len(r["anytime"]) == 4 and r["anytime"][-1]["top1"] > 30


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_c_on_the_gpu_matches_one_program_per_sample_and_repeats(dtype, monkeypatch):
    """Small B, large C: the launcher splits C (three launches); the result equals the float64 reference
    like the unsplit kernel, and repeats bit for bit."""
    from msd_fast.kernels.msd_loss_plan import launch_plan, split_plan

    N, B, C, D = 4, 8, 50_000, 96
    assert split_plan(B, C, launch_plan(N, C, D)["BLOCK_C"], torch.cuda.get_device_properties(0).multi_processor_count)[0] > 1
    z, y, f = _inputs(N, B, C, D, dtype)
    split = _loss_and_grads("triton", z, y, f, "all")
    again = _loss_and_grads("triton", z, y, f, "all")
    assert torch.equal(split[0], again[0]) and all(torch.equal(a, b) for a, b in zip(split[1], again[1]))
    monkeypatch.setenv("MSD_FAST_TRITON_SPLIT", "1")
    whole = _loss_and_grads("triton", z, y, f, "all")
    ref = _loss_and_grads("reference", z, y, f, "all", dtype=torch.float64)
    for got in (split, whole):
        assert max([_rel_err(got[0], ref[0])] + [_rel_err(g, r) for g, r in zip(got[1], ref[1])]) < TOL[dtype]


def test_an_out_of_range_class_gives_nan_on_the_gpu_not_a_bad_read():
    """validate=False on CUDA: a class index outside [0, C) gives NaN (no host sync checks it), and the CUDA
    context stays usable (no illegal address)."""
    z, y, f = _inputs(4, 64, 1000, 32, torch.bfloat16)
    zl, fl = list(z.unbind(0)), list(f.unbind(0))
    bad = y.clone()
    bad[5] = 1000
    assert torch.isnan(msd_loss(zl, bad, fl, validate=False))
    torch.cuda.synchronize()
    assert torch.isfinite(msd_loss(zl, y, fl, validate=False))


NEEDS_CUDA_EXT = pytest.mark.skipif(not (_ext.available() and _ext.has_cuda()),
                                    reason="extension built without CUDA sources")


@NEEDS_CUDA_EXT
def test_scale_grads_on_the_gpu_matches_foreach_mul_and_checks_devices():
    checks.scale_op_matches_foreach_mul(DEV)
    with pytest.raises(RuntimeError, match=r"grads\[0\] is on cuda:0 but scale is on cpu"):
        torch.ops.msd_fast.scale_grads_([torch.ones(3, device=DEV)], torch.tensor(2.0))


@NEEDS_CUDA_EXT
@pytest.mark.parametrize("g", [1.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_on_the_gpu_scales_the_forwards_buffers_in_place(g, dtype):
    """The gradients the leaves get are the Triton kernel's own buffers, scaled on the device (or left alone
    for g == 1): no new buffer and no copy in the backward."""
    checks.backward_scales_the_forwards_buffers_in_place(DEV, g, dtype)


@NEEDS_CUDA_EXT
def test_retain_and_create_graph_on_the_gpu():
    checks.retained_graph_backwards_accumulate_exactly(DEV, 2.0)
    checks.retained_graph_backwards_accumulate_exactly(DEV, 1.0)
    checks.create_graph_keeps_the_gradient_differentiable_in_g(DEV)


@NEEDS_CUDA_EXT
def test_scale_grads_reads_the_scale_on_the_device_at_replay():
    """Captured once, the scaling follows the scale tensor's value at each replay: 1 leaves the buffers alone,
    anything else multiplies (the branch is on the device, so the graph holds both cases)."""
    x = torch.randn(4, 1000, device=DEV, dtype=torch.bfloat16)
    buf, scale = x.clone(), torch.ones((), device=DEV)
    torch.ops.msd_fast.scale_grads_([buf], scale)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.msd_fast.scale_grads_([buf], scale)
    for value in (1.0, 2.0, 1.0, -0.5):
        buf.copy_(x)
        scale.fill_(value)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(buf, x if value == 1.0 else (x.float() * value).bfloat16()), value


def _graph_trainer(tmp_path, name, *extra):
    from msd_fast.train.config import resolve_config
    from msd_fast.train.trainer import Trainer

    return Trainer(resolve_config(["--dataset", "synthetic", "--model", "resnet18", "--width", "0.125", "--batch-size",
                                   "64", "--epochs", "1", "--no-progress", "--tensorboard", "false", "--device", "cuda",
                                   "--out-dir", str(tmp_path), "--run-name", name, *extra]))


def test_whole_step_cuda_graph_trains_like_the_eager_step(tmp_path):
    """fp32, deterministic cuDNN, no compile: the replayed graph and the eager step give the same weights
    after warm-up, capture and several replays (learning rate changing every step)."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        ts = [_graph_trainer(tmp_path, n, "--amp", "none", "--compile", "false", "--cuda-graph", g)
              for n, g in (("eager", "false"), ("graph", "true"))]
        for t in ts:
            t.run_steps(8)
        assert ts[1].step.graph.runner.graph is not None and ts[0].step.graph is None
        for a, b in zip(ts[0].model.parameters(), ts[1].model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for k in ts[0].sums:
            torch.testing.assert_close(ts[0].sums[k], ts[1].sums[k], rtol=1e-5, atol=1e-4)
    finally:
        torch.backends.cudnn.deterministic = False


@pytest.mark.parametrize("graph", ["true", "false"])
def test_training_step_makes_no_host_sync(tmp_path, graph):
    """After warm-up, a step (batch draw and assembly, forward, fused loss, backward, SGD, metrics) never
    waits for the GPU: torch's sync debug mode turns any synchronising call into an error."""
    t = _graph_trainer(tmp_path, "sync" + graph, "--cuda-graph", graph)
    t.run_steps(5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.run_steps(3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert float(t.sums["count"]) == 8 * 64


# Last in the file: the grid compiles the most kernel variants (most of this file's time on a fresh GPU
# machine), so when scripts/gpu_check.sh's time limit stops the run, the shorter checks above have all run.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("teacher", ["all", "last"])
def test_compiled_triton_matches_float64_reference_over_a_random_grid(dtype, teacher):
    worst = 0.0
    seed = 10 * [torch.float32, torch.bfloat16, torch.float16].index(dtype) + ["all", "last"].index(teacher)
    for i, (N, B, C, D) in enumerate(_grid(seed=seed)):
        z, y, f = _inputs(N, B, C, D, dtype, scale=3.0 if i % 3 else 30.0, seed=i)
        # an integer tau takes the one-exp path (TAU_INT), 2.5 the two-exp one; one tau per teacher mode, so
        # the grid compiles no more kernel variants than one tau would (the interpreter tests cross them)
        tau = 3.0 if teacher == "all" else 2.5
        loss, grads = _loss_and_grads("triton", z, y, f, teacher, temperature=tau)
        ref, ref_grads = _loss_and_grads("reference", z, y, f, teacher, dtype=torch.float64, temperature=tau)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        # gradients against the exact ones rounded to the input dtype: the best answer that dtype holds (at
        # B = 4096 the hint's fp16 gradients, ~1e-6, are subnormal: rounding alone costs 1e-2 there)
        err = max([_rel_err(loss, ref)] + [_rel_err(g, r.to(dtype)) for g, r in zip(grads, ref_grads)])
        worst = max(worst, err)
        assert err < TOL[dtype], f"N={N} B={B} C={C} D={D} {dtype} {teacher}: relative error {err:.3g}"
    print(f"worst relative error {dtype} {teacher}: {worst:.3g}")
