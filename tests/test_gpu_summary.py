"""bench.gpu_summary turns a gpu_check.sh output folder into the README's GPU table: the headline loss row
is the list-input Triton call, with the stacked and the one-program-per-sample variants beside it."""
import json

from bench.gpu_summary import summarize, table


def _row(backend, ms, **kw):
    return dict(N=4, B=32, C=128256, D=512, dtype="bfloat16", backend=backend, median_ms=ms, **kw)


def test_summary_reads_list_split_and_stacked_rows(tmp_path):
    rows = [_row("memcpy_floor", 0.010), _row("compiled_reference_list", 0.400), _row("compiled_reference", 0.380),
            _row("triton_list", 0.020), _row("triton", 0.030), _row("triton_list_nosplit", 0.080),
            dict(N=4, B=32, C=128256, D=512, dtype="bfloat16", backend="cpp", skipped="CPU only")]
    machine = {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "python": "3.12"}
    (tmp_path / "loss_cuda_gpu_check.json").write_text(json.dumps({"machine": machine, "rows": rows}))
    (tmp_path / "steps.txt").write_text("build: ok\nloss bench: ok\n")
    s = summarize(tmp_path)
    (r,) = s["loss"]
    assert r["triton_us"] == 20.0 and r["triton_stacked_us"] == 30.0 and r["triton_nosplit_us"] == 80.0
    assert abs(r["vs_compiled"] - 20.0) < 1e-9 and abs(r["share_of_copy_bandwidth"] - 0.5) < 1e-9
    text = table(s)
    assert "NVIDIA H200" in text and "| N=4 B=32 C=128256 D=512 bfloat16 | 20 | 30 | 80 | 400 | 20.00x | 50% |" in text
    assert "| build | ok |" in text


def test_summary_reads_every_training_file_with_ratios_and_busy_share(tmp_path):
    machine = {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "python": "3.12"}
    for batch, (base, ours) in {128: (1000.0, 3000.0), 512: (2000.0, 5000.0)}.items():
        rows = {"baseline (eager)": {"images_per_s": base, "warmup_s": 1.0},
                "msd_fast (defaults)": {"images_per_s": ours, "warmup_s": 20.0, "gpu_busy_share": 0.9,
                                        "gpu_activities_per_call": 3.0}}
        (tmp_path / f"train_cuda_resnet18_b{batch}.json").write_text(
            json.dumps({"machine": machine, "batch": batch, "models": {"resnet18": rows}}))
    s = summarize(tmp_path)
    assert s["gpu"] == "NVIDIA H200"
    ours = [r for r in s["train"] if r["config"] == "msd_fast (defaults)"]
    assert [(r["batch"], r["ratio"]) for r in ours] == [(128, 3.0), (512, 2.5)]
    text = table(s)
    assert "| resnet18 | 128 | msd_fast (defaults) | 3000 | 3.00x | 20.0 | 90% | 3 | - |" in text
    assert "| resnet18 | 512 | baseline (eager) | 2000 | 1.00x | 1.0 | - | - | - |" in text


def test_busy_time_is_the_union_of_the_gpu_intervals():
    from bench.timing import union_length

    assert union_length([]) == 0.0
    assert union_length([(0, 5), (1, 2), (6, 8), (7, 9)]) == 8.0  # nested and overlapping spans count once
    assert union_length([(3, 4), (0, 1)]) == 2.0  # any order


def test_summary_reads_the_kernel_benchmark(tmp_path):
    machine = {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "python": "3.12"}
    row = dict(N=8, B=4096, C=1000, D=512, dtype="bfloat16", copy_us=60.0, kernel_us=100.0,
               kernel_share_of_copy_bandwidth=0.6, kernel_nosplit_us=100.0, loss_fwd_bwd_device_us=180.0,
               loss_fwd_bwd_scaled_device_us=230.0, host_loss_fwd_us=300.0, host_loss_fwd_bwd_us=700.0)
    (tmp_path / "kernel_cuda_gpu_check.json").write_text(json.dumps(
        {"machine": machine, "rows": [row], "host": {"torch_op_launch_us": 12.5, "triton_one_arg_launch_us": 30.0}}))
    s = summarize(tmp_path)
    text = table(s)
    assert s["gpu"] == "NVIDIA H200"
    assert "| N=8 B=4096 C=1000 D=512 bfloat16 | 60.0 | 100.0 | 60% | 100.0 | 180.0 | 230.0 | 300 | 700 |" in text
    assert "PyTorch op 12.5 µs, a one-argument Triton kernel 30.0 µs" in text


def test_summary_names_the_fastest_swept_tiling(tmp_path):
    base = dict(N=8, B=4096, C=1000, D=512, dtype="bfloat16", copy_us=50.0)
    sweep = [dict(base, plan="(launcher's plan: NP=8)", kernel_us=500.0, share_of_copy_bandwidth=0.1),
             dict(base, plan="BLOCK_C=64,num_warps=2", kernel_us=100.0, share_of_copy_bandwidth=0.5),
             dict(base, plan="BLOCK_C=512,num_warps=8", error="OutOfResources: shared memory")]
    (tmp_path / "kernel_cuda_gpu_check.json").write_text(json.dumps({"machine": {"gpu": "X"}, "rows": [],
                                                                     "sweep": sweep}))
    text = table(summarize(tmp_path))
    assert ("Tiling sweep at N=8 B=4096 C=1000 D=512 bfloat16 (3 plans): the launcher's plan 500.0 µs (10% of copy "
            "bandwidth); fastest `BLOCK_C=64,num_warps=2` 100.0 µs (50%)." in text)


def test_two_calls_of_one_check_are_merged(tmp_path):
    """A check split over two device calls (build+tests+kernel, then train+loss): both folders' files in one
    summary, the steps of both."""
    from bench.gpu_summary import main

    machine = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "python": "3.12"}
    first, second = tmp_path / "call1", tmp_path / "call2"
    first.mkdir()
    second.mkdir()
    (first / "steps.txt").write_text("build: ok\nCUDA tests: ok\nbench_kernel: ok\n")
    (first / "kernel_cuda_gpu_check.json").write_text(json.dumps({"machine": machine, "rows": [], "host": {}}))
    (second / "steps.txt").write_text("train resnet18 b128: ok\nbench_loss: FAILED\n")
    rows = {"baseline (eager)": {"images_per_s": 1000.0, "warmup_s": 1.0},
            "msd_fast (defaults)": {"images_per_s": 4000.0, "warmup_s": 9.0}}
    (second / "train_cuda_resnet18_b128.json").write_text(
        json.dumps({"machine": machine, "batch": 128, "models": {"resnet18": rows}}))
    assert main([str(first), str(second)]) == 0
    merged = json.loads((second / "merged" / "summary.json").read_text())
    assert merged["gpu"] == "NVIDIA H100 80GB HBM3"
    assert merged["steps"] == {"build": "ok", "CUDA tests": "ok", "bench_kernel": "ok", "train resnet18 b128": "ok",
                               "bench_loss": "FAILED"}
    assert [r["ratio"] for r in merged["train"] if r["config"] == "msd_fast (defaults)"] == [4.0]


def test_benchmarks_write_results_whole_after_every_shape(tmp_path):
    """bench_kernel / bench_loss save through write_results after every shape: each write replaces the file
    whole (a temp file renamed over it), so a run killed by its step's timeout leaves valid JSON."""
    from bench.results_file import write_results

    path = tmp_path / "sub" / "kernel_cuda_gpu_check.json"
    write_results(path, {"rows": [1]})
    write_results(path, {"rows": [1, 2]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind
