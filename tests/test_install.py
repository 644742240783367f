"""`pip install .` into a fresh virtual environment on this CPU-only machine, with torch guessing a CUDA_HOME
that cannot build CUDA code (/usr/local): the build must fall back to the CPU-only extension with one clear
line, and the installed package (not this source tree) must work: the fused CPU loss through the run-time
instruction-set dispatch, the presets, the kernels package, the CLI. Slow (a C++ build); it runs in CI.

The fresh venv borrows torch & co. from the development venv through a .pth file (copying torch would be
gigabytes); msd_fast itself is built and installed from scratch."""
import os
import pathlib
import site
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_in_a_fresh_venv_falls_back_to_cpu_and_works(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    pathlib.Path(purelib, "borrowed_deps.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH", "MSD_FAST_NO_CUDA")}
    env["CUDA_HOME"] = "/usr/local"  # what torch guesses on a CPU-only machine: no CUDA runtime library there
    src = tmp_path / "src"  # a clean copy of the tree (no build/ left over from a development build)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((ROOT / f).read_bytes())
    r = subprocess.run([str(py), "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", str(src)],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "msd_fast: building the CPU-only extension (CUDA_HOME=/usr/local has no " in out
    code = textwrap.dedent("""
        import importlib.resources, pathlib, torch, msd_fast
        from msd_fast import _ext, msd_loss
        assert "site-packages" in msd_fast.__file__, msd_fast.__file__   # the installed copy, not the tree
        assert _ext.available() and not _ext.has_cuda()
        assert _ext._EXT.cpu_isa() in ("avx512", "avx2", "baseline")
        so = next(pathlib.Path(msd_fast.__file__).parent.glob("_C*.so"))
        assert so.stat().st_size < 4_000_000, so.stat().st_size        # release build: no debug info
        z, y = torch.randn(3, 8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        torch.testing.assert_close(msd_loss(z, y, backend="cpp"), msd_loss(z, y, backend="reference"))
        assert (importlib.resources.files("msd_fast.configs") / "fashion_mnist_cpu.yaml").is_file()
        import msd_fast.kernels, msd_fast.train, msd_fast.evaluate
        print("ok", _ext._EXT.cpu_isa())
    """)
    r = subprocess.run([str(py), "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr[-3000:]
    r = subprocess.run([str(py), "-m", "msd_fast.train", "--help"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "--method" in r.stdout
