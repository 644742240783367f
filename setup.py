"""Build msd_fast: the Python package, the Triton kernels (kernels/ -> msd_fast.kernels) and the C++/CUDA
extension msd_fast._C (csrc/).

Environment switches:
  MSD_FAST_SKIP_EXT=1   build no extension (msd_fast then runs on the reference/Triton backends)
  MSD_FAST_NO_CUDA=1    build the CPU sources only, even when a CUDA toolkit is found
  MSD_FAST_MARCH        -march for the C++ sources (default: native)
  TORCH_CUDA_ARCH_LIST  GPU architectures for the .cu files (default here: "8.0;9.0", A100 and H100)
"""
import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("MSD_FAST_SKIP_EXT", "0") != "1":
    from torch.utils import cpp_extension

    with_cuda = cpp_extension.CUDA_HOME is not None and os.environ.get("MSD_FAST_NO_CUDA", "0") != "1"
    # The extension is built on the machine that runs it (pip install -e .), so it may use its CPU's
    # vector units; MSD_FAST_MARCH overrides (e.g. "x86-64-v2" for a portable wheel).
    # -fopenmp: at::parallel_for is an OpenMP loop in the headers; without it the fused loss runs serially.
    cxx_flags = ["-O3", "-fopenmp", "-std=c++20", f"-march={os.environ.get('MSD_FAST_MARCH', 'native')}"]
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
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension("msd_fast._C", sources, extra_compile_args={"cxx": cxx_flags},
                                         extra_link_args=["-fopenmp"])
    ext_modules = [ext]
    cmdclass = {"build_ext": cpp_extension.BuildExtension}

setup(
    packages=["msd_fast", "msd_fast.loss", "msd_fast.models", "msd_fast.data", "msd_fast.train", "msd_fast.evaluate",
              "msd_fast.kernels", "msd_fast.configs"],
    package_dir={"msd_fast.kernels": "kernels"},
    package_data={"msd_fast.configs": ["*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
