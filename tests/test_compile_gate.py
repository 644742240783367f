"""The ahead-of-time compile gate (msd_fast.kernels.compile_gate): every Triton kernel configuration the
launcher can pick compiles for sm_80 and sm_90 without a GPU, with no register spills, and the gate itself
catches the failure modes it exists for (a constexpr-specialised size, a spill)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the gate compiles real kernels
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _python(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_gate_compiles_every_launch_configuration(tmp_path):
    out = tmp_path / "gate.json"
    r = subprocess.run([sys.executable, "-m", "msd_fast.kernels.compile_gate", "--json", str(out)], env=_env(),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())["results"]
    assert all(row["ok"] and row["local"] == 0 for row in rows)
    # coverage: both archs, every dtype, NP, teacher mode, with and without features, and the specialisations
    for key, want in (("arch", {80, 90}), ("dtype", {"float32", "bfloat16", "float16"}), ("NP", {2, 4, 8}),
                      ("teacher_last", {False, True})):
        assert {row[key] for row in rows} == want, key
    assert {row["D"] > 0 for row in rows} == {False, True}
    assert any(row["B"] == 1 and "B" in row["specialised"] for row in rows)
    assert any(row["D"] == 1 and "D" in row["specialised"] for row in rows)
    assert max(row["C"] for row in rows) > 131072
    assert {row.get("BLOCK_C") for row in rows} >= {2, 4, 64, 256, 512, 1024}
    assert {row.get("kernel", "fused") for row in rows} == {"fused", "split_stats", "split_main", "split_finish"}
    assert all(0 < row["reg"] <= 255 for row in rows)
    # both exp paths (integer tau: TAU_INT = 3; tau = 2.5: two exps) in every kernel
    for kernel in ("fused", "split_stats", "split_main"):
        assert {row["TAU_INT"] for row in rows if row.get("kernel", "fused") == kernel} == {0, 3}, kernel
    # ignore_index's masking compiled in both kernels that read targets
    for kernel in ("fused", "split_main"):
        assert {row["HAS_IGNORE"] for row in rows if row.get("kernel", "fused") == kernel} == {False, True}, kernel


def test_gate_rejects_a_size_cast_that_breaks_when_the_launcher_specialises_it():
    r = _python("""
        import torch
        from msd_fast.kernels.compile_gate import check_compile
        from triton_toys import _toy_scalar_cast_kernel as k
        x = torch.empty(16)
        for B in (5, 1):
            row = check_compile(k, (x, B), dict(BLOCK=16), 90)
            print(B, row["ok"], row.get("specialised"), row.get("error", ""))
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("5 True [] ")
    assert lines[1].startswith("1 False None CompilationError")


def test_gate_reports_register_spills():
    r = _python("""
        import torch
        from msd_fast.kernels.compile_gate import check_compile
        from triton_toys import _toy_spill_kernel as k
        row = check_compile(k, (torch.empty(16), torch.empty(16)), dict(BLOCK=4096, num_warps=1), 90)
        print(row["ok"], row["local"] > 0 or row["stack"] > 0, row.get("error", ""))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False True register spill"), r.stdout


def test_gate_refuses_to_run_under_the_interpreter():
    env = _env()
    env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, "-m", "msd_fast.kernels.compile_gate"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "TRITON_INTERPRET" in r.stderr


@pytest.mark.parametrize("B", [1, 16])
def test_triton_batch_of_one_and_sixteen_interpreted(B):
    """Values at the sizes the launcher specialises (B = 1, B % 16 == 0), through the interpreter."""
    import torch

    from msd_fast import _ext, msd_loss
    from msd_fast.loss.backends import triton_usable
    from msd_fast.loss.fused import triton_kernel_on_cpu
    from bruteforce import make_inputs

    if triton_usable(torch.device("cpu")) or not _ext.available():
        pytest.skip("Triton interpreter not active, or no extension (the CPU route of the fused operator)")
    z, y, f = make_inputs(3, B, 16, 1)
    with triton_kernel_on_cpu():
        got = msd_loss(z, y, f, backend="fused")
    ref = msd_loss(z, y, f, backend="reference")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_gate_sees_vector_accesses_and_row_local_reductions():
    """The tiles' loads and stores are 16-byte vectors when the rows allow it (the launcher's `row_align`
    hint; without it the compiler saw no alignment through the per-exit pointer select and made every
    access 2 bytes wide, with each row reduction crossing all 8 warps), and a C that allows no vector still
    compiles, with scalar accesses."""
    r = _python("""
        import json, os
        from msd_fast.kernels.compile_gate import compile_one
        rows = [compile_one(dict(N=8, B=4096, C=1000, D=512, dtype="bfloat16", teacher_last=False), 90),
                compile_one(dict(N=4, B=32, C=128257, D=512, dtype="bfloat16", teacher_last=False), 90),
                compile_one(dict(N=4, B=5, C=131072, D=1536, dtype="bfloat16", teacher_last=True,
                                 kernel="split_main"), 90)]
        os.environ["MSD_FAST_TRITON_PLAN"] = "max_align=2"   # the sweep's stand-in for the kernel before the hint
        rows.append(compile_one(dict(N=8, B=4096, C=1000, D=512, dtype="bfloat16", teacher_last=False), 90))
        print(json.dumps([dict(ok=r["ok"], reg=r.get("reg"), access=r.get("access")) for r in rows]))
    """)
    assert r.returncode == 0, r.stdout + r.stderr
    aligned, odd_c, split, capped = json.loads(r.stdout.strip().splitlines()[-1])
    assert aligned["ok"] and odd_c["ok"] and split["ok"]
    a = aligned["access"]
    assert a.get("LDG.E.128", 0) >= 2 and a.get("STG.E.128", 0) >= 2, a   # logits and features, both ways
    assert a.get("LDG.E.U16", 0) <= 1, a      # only the gather of each row's target logit
    assert a.get("SHFL.BFLY", 0) < 120, a     # was 384: every row reduction across all warps
    assert odd_c["access"].get("LDG.E.U16", 0) >= 2, odd_c["access"]   # C odd: no vector is allowed
    assert split["access"].get("LDG.E.128", 0) >= 1 and split["access"].get("STG.E.128", 0) >= 1, split
    assert capped["ok"] and capped["access"].get("LDG.E.U16", 0) >= 16 and "LDG.E.128" not in capped["access"]


def test_row_align_reads_addresses_and_pitch():
    import torch

    from msd_fast.kernels.msd_loss_plan import row_align

    bf = [torch.empty(4, 1000, dtype=torch.bfloat16) for _ in range(3)]
    assert row_align(bf, 1000) == 8                  # 16 bytes: 2000-byte rows, aligned allocations
    assert row_align([torch.empty(4, 100, dtype=torch.bfloat16)], 100) == 4   # 200-byte rows: 8 bytes
    assert row_align([torch.empty(4, 100)], 100) == 4                      # fp32, 400-byte rows: 16 bytes
    assert row_align([torch.empty(4, 1001)], 1001) == 1                    # fp32, odd pitch: one element
    shifted = torch.empty(4 * 1000 + 1, dtype=torch.bfloat16)[1:].view(4, 1000)
    assert row_align(bf + [shifted], 1000) == 1      # one view at an odd offset lowers it for all
    assert row_align([], 0) == 1


def test_profile_prints_one_problems_sass_profile():
    r = subprocess.run([sys.executable, "-m", "msd_fast.kernels.compile_gate", "--profile",
                        "N=4,B=32,C=1000,D=64,dtype=bfloat16", "--arch", "90", "--plan", "BLOCK_C=128,num_warps=4"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["BLOCK_C"] == 128 and row["num_warps"] == 4 and row["reg"] > 0 and row["instructions"] > 100
    assert len(row["loops"]) == 3 and all(lp["instructions"] > 0 for lp in row["loops"])  # pass 1, pass 2, hint
    assert row["access"].get("LDG.E.U16", 0) <= 1   # vector accesses (4 bf16 per thread here: LDG.E.64)
    assert row["tau"] == 3.0 and row["TAU_INT"] == 3
    bad = subprocess.run([sys.executable, "-m", "msd_fast.kernels.compile_gate", "--profile", "N=4,C=10"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "lacks B, D, dtype" in bad.stderr


def test_integer_tau_halves_the_exps_per_element():
    """tau = 3 (TAU_INT): one MUFU exp per element in each pass over C instead of two (sm_90 SASS; the plan
    override exps=2 compiles the two-exp kernel); either way each pass has at least 15% fewer instructions
    than the kernel of f804f21, whose tl.exp put a subnormal fix-up around every MUFU and whose one-hot was a
    64-bit compare (195 and 331 instructions per iteration of pass 1 and 2)."""
    r = _python("""
        import json, os
        from msd_fast.kernels.compile_gate import compile_kernel, _kernel_args, sass_profile
        out = []
        for plan in ("", "exps=2"):
            os.environ["MSD_FAST_TRITON_PLAN"] = plan
            fn, args, kwargs, _ = _kernel_args(dict(N=8, B=4096, C=1000, D=512, dtype="bfloat16",
                                                    teacher_last=False, tau=3.0))
            kernel, _ = compile_kernel(fn, args, kwargs, 90)
            out.append([(lp["MUFU"], lp["instructions"]) for lp in sass_profile(kernel.asm["cubin"])["loops"]])
        print(json.dumps(out))
    """)
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = json.loads(r.stdout.strip().splitlines()[-1])
    # loops: pass 1, pass 2, the hint (no exp); a [8, 256] tile over 256 threads is 8 elements per thread
    assert [lp[0] for lp in one] == [9, 8, 0] and [lp[0] for lp in two] == [18, 16, 0], (one, two)
    assert all(v[0][1] <= 0.85 * 195 and v[1][1] <= 0.85 * 331 for v in (one, two)), (one, two)


def test_the_sweeps_kernel_variants_compile_without_spills():
    """The plan overrides the GPU sweep times beside the launcher's plan (one-element accesses, two exps,
    per-cell KD accumulators, a 64-register cap) compile for sm_80 and sm_90 at the sweep's shapes with no
    spill (a variant that spilled would be timed as a slower kernel for the wrong reason)."""
    r = _python("""
        import json, os
        from msd_fast.kernels.compile_gate import compile_one
        rows = []
        for plan in ("max_align=2", "exps=2", "tile_acc=1", "maxnreg=64"):
            os.environ["MSD_FAST_TRITON_PLAN"] = plan
            for arch in (80, 90):
                for p in (dict(N=8, B=4096, C=1000, D=512, dtype="bfloat16", teacher_last=False, tau=3.0),
                          dict(N=4, B=32, C=128256, D=512, dtype="bfloat16", teacher_last=False, tau=3.0,
                               kernel="split_main")):
                    row = compile_one(p, arch)
                    rows.append(dict(plan=plan, arch=arch, ok=row["ok"], error=row.get("error")))
        print(json.dumps(rows))
    """)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(rows) == 16 and all(row["ok"] for row in rows), rows
