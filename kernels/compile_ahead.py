"""Compiles Triton kernels for a CUDA architecture without a GPU and without launching them.

The interpreter (``TRITON_INTERPRET=1``) accepts Python that the compiler rejects (a loop-carried
value changing shape, a dtype mismatch in ``tl.dot``), so the CPU test suite also compiles every
kernel variant for sm_90 through this. Each result's ``asm["ptx"]`` can go through ``ptxas -v``
for registers and spills.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable


def compile_ahead(module: ModuleType, launch: Callable[[], object], *, arch: int = 90) -> list:
    """Runs ``launch()`` (a call of one of ``module``'s host launchers, on CPU tensors) with every
    ``@triton.jit`` kernel of ``module`` replaced by a recorder, then compiles each recorded launch,
    specialised the way a real launch specialises it, for CUDA compute capability ``arch``. Needs
    TRITON_INTERPRET unset when ``module`` was imported."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.interpreter import InterpretedFunction

    launches = []

    class Record:  # stands in for a kernel: keeps the launch's arguments
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((self.kernel, args, kw))

    kernels = {name: k for name, k in vars(module).items() if isinstance(k, (triton.JITFunction, InterpretedFunction))}
    assert not any(isinstance(k, InterpretedFunction) for k in kernels.values()), \
        "compile_ahead needs the compiled (not interpreted) kernels: import with TRITON_INTERPRET unset"
    vars(module).update({name: Record(k) for name, k in kernels.items()})
    try:
        launch()
    finally:
        vars(module).update(kernels)
    compiled = []
    for kernel, args, kw in launches:
        options = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
        signature, constexprs, attrs = {}, dict(kw), {}
        for i, (param, arg) in enumerate(zip(kernel.params, args)):
            ty, key = native_specialize_impl(BaseBackend, arg, False, not param.do_not_specialize, True)
            signature[param.name] = ty
            if ty == "constexpr":
                constexprs[param.name] = arg
            elif key:
                attrs[(i,)] = BaseBackend.parse_attr(key)
        signature.update({name: "constexpr" for name in kw})
        src = ASTSource(kernel, {p.name: signature[p.name] for p in kernel.params}, constexprs, attrs)
        compiled.append(triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options))
    return compiled
