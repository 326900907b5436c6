"""Build script: the Python package, `kernels/` installed as `lark_fast.kernels`, and the C++ extension.

Metadata lives in pyproject.toml; this file only carries what PEP 621 cannot express (package_dir
mapping and the pybind11 extension `lark_fast._C`, compiled from csrc/ with OpenMP when available).

The extension is several translation units (every csrc/*.cpp: the bindings, and the solvers per solver and
per instruction set; see csrc/solvers.hpp), compiled in parallel: as many jobs as CPUs, or
LARK_FAST_BUILD_JOBS (1: one at a time).
"""
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext, has_flag
from setuptools import setup

ParallelCompile("LARK_FAST_BUILD_JOBS", default=0).install()


class BuildExt(build_ext):
    def build_extensions(self):
        if has_flag(self.compiler, "-fopenmp"):
            for ext in self.extensions:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


ext_modules = [
    Pybind11Extension(
        "lark_fast._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        depends=sorted(glob("csrc/*.hpp") + glob("csrc/*.inc")),
        cxx_std=17,
        # -ffp-contract=off: no fused multiply-add, so the kernels of every instruction set (simd.hpp)
        # give the same bits.
        extra_compile_args=["-O3", "-ffp-contract=off"],
    )
]

setup(
    packages=["lark_fast", "lark_fast.train", "lark_fast.kernels", "lark_fast.kernels.lm_head_stats", "lark_fast.kernels.lm_head_backward",
              "lark_fast.kernels.sketch", "lark_fast.kernels.weighted_ce"],
    package_dir={"lark_fast": "lark_fast", "lark_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
)
