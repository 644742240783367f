"""Build msd_fast: the Python package, the Triton kernels (kernels/ -> msd_fast.kernels) and the C++/CUDA
extension msd_fast._C (csrc/).

Environment switches:
  MSD_FAST_SKIP_EXT=1   build no extension (msd_fast then runs on the reference/Triton backends)
  MSD_FAST_NO_CUDA=1    build the CPU sources only, even when a CUDA toolkit is found
  MSD_FAST_MARCH        -march for the generic C++ sources, for local experiments only (default: none, so
                        the build runs on any x86-64 CPU; the loss kernel is compiled for AVX-512, AVX2
                        and baseline x86-64 and picked at run time whatever this is)
  TORCH_CUDA_ARCH_LIST  GPU architectures for the .cu files (default here: "8.0;9.0", A100 and H100)

The CUDA sources are built only when they can be: torch is a CUDA build, and CUDA_HOME (as torch finds it)
holds bin/nvcc and the CUDA runtime library. Otherwise the build says why, in one line, and builds the
CPU-only extension (the Triton kernel still serves CUDA tensors at run time when a GPU is there).
"""
import glob
import os

from setuptools import setup

def cuda_build_problem(cpp_extension) -> str:
    """'' when the .cu sources can be compiled and linked here, else why not (one phrase)."""
    import torch

    if os.environ.get("MSD_FAST_NO_CUDA", "0") == "1":
        return "MSD_FAST_NO_CUDA=1"
    if torch.version.cuda is None:
        return "this torch is a CPU-only build"
    home = cpp_extension.CUDA_HOME
    if not home:
        return "no CUDA toolkit found (set CUDA_HOME)"
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return f"CUDA_HOME={home} has no bin/nvcc"
    libs = [p for d in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"))
            for p in glob.glob(os.path.join(home, d, "libcudart.so*"))]
    if not libs:
        return f"CUDA_HOME={home} has no CUDA runtime library (libcudart.so)"
    return ""


ext_modules, cmdclass = [], {}
if os.environ.get("MSD_FAST_SKIP_EXT", "0") != "1":
    from torch.utils import cpp_extension

    problem = cuda_build_problem(cpp_extension)
    with_cuda = not problem
    if problem and os.environ.get("MSD_FAST_NO_CUDA", "0") != "1":
        print(f"msd_fast: building the CPU-only extension ({problem}); the fused loss on CUDA then uses the "
              f"Triton kernel with the torch reduction", flush=True)
    # -fopenmp: at::parallel_for is an OpenMP loop in the headers; without it the fused loss runs serially.
    # -g0: no debug info in the release build (with it the .so is 17 MB instead of 0.7 MB). No -march: one build for any x86-64
    # CPU; csrc/fused_cpu_{avx512,avx2,baseline}.cpp carry their own target and are picked at run time.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-std=c++20", "-Wno-psabi", "-fvisibility=hidden"]
    if os.environ.get("MSD_FAST_MARCH"):
        cxx_flags.append(f"-march={os.environ['MSD_FAST_MARCH']}")
    link_flags = ["-fopenmp", "-s"]  # -s: strip symbols that are not needed to load the module
    sources = sorted(glob.glob("csrc/*.cpp"))
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # pip's CUDA wheels (nvidia-*) carry headers that a bare toolkit may lack.
        try:
            import nvidia

            nv_includes = sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "include")))
        except ImportError:
            nv_includes = []
        ext = cpp_extension.CUDAExtension(
            "msd_fast._C",
            sources + sorted(glob.glob("csrc/*.cu")),
            include_dirs=nv_includes,
            define_macros=[("MSD_FAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
    else:
        ext = cpp_extension.CppExtension("msd_fast._C", sources, extra_compile_args={"cxx": cxx_flags},
                                         extra_link_args=link_flags)
    ext_modules = [ext]
    cmdclass = {"build_ext": cpp_extension.BuildExtension}

setup(
    packages=["msd_fast", "msd_fast.loss", "msd_fast.models", "msd_fast.data", "msd_fast.train", "msd_fast.evaluate",
              "msd_fast.image", "msd_fast.lm", "msd_fast.kernels", "msd_fast.configs"],
    package_dir={"msd_fast.kernels": "kernels"},
    package_data={"msd_fast.configs": ["*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
