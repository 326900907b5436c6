"""Per-trajectory gradient sketches from one forward and one activation-gradient backward (docs/method.md §4).

For a layer whose weight multiplies its input x (nn.Linear: y = W x + b), a trajectory's weight
gradient is G_k = Σ_{t ∈ k} δ_t x̃_tᵀ with δ_t = ∂ℓ_k/∂y_t and x̃_t = [x_t; 1] when the layer has a
bias (the bias gradient is G's last column). Its Kronecker sketch is

    S_k = P_out G_k P_inᵀ = Σ_{t ∈ k} (P_out δ_t)(P_in x̃_t)ᵀ,    [k, k] per layer,

with the seeded Rademacher projections of ``lark_fast.kernels.sketch`` (E‖S_k‖² = ‖G_k‖², and the
sketches' inner products are unbiased for the gradients'). Inputs are projected in a forward hook,
output gradients in a hook on the layer's output, and only the projected [tokens, k] vectors are
multiplied, per trajectory, by a thin padded bmm: no per-token outer product exists.

Loss: ℓ_k is trajectory k's mean nll over its scored tokens (L_k of docs/method.md §3). One backward of
Σ_t nll_t gives every trajectory's own δ_t at once, because packed trajectories never attend to each
other; the parameters are frozen during it (no weight gradient is ever formed). Token weights are
1 in the backward (fp16 activation gradients keep their range, as with loss scaling) and the caller
divides trajectory k's sketch by n_k (its exact norm by n_k²). The LM head is special: its output
gradient is p_t - e_{y_t} (times the soft-cap derivative), and P_out δ_t comes out of the fused
statistics' vocabulary sweep, never materialising [tokens, V].

Layers are found through ``SKETCHERS``, a registry keyed by module type (nn.Linear, transformers'
Conv1D); register more with ``register_sketcher``. A weight shared by several modules (a head tied to
the input embeddings) is counted per module: the head's block is the gradient of its use as the head.
``exact=True`` also computes the exact ‖G_k‖² of every sketched layer, ghost (the T×T Gram of δ
times that of x̃) or direct (form G_k), chosen per layer by cost: a validation mode, memory-hungry
by design.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Union

import torch

from .kernels.sketch import IN, OUT, SegmentPlan, projection_key, signs


@dataclass(frozen=True)
class Sketcher:
    """How a module type's weight gradient reads as G = Σ_t δ_t x̃_tᵀ: ``dims(module) -> (d_in,
    d_out, has_bias)`` and ``input(module, args) -> x [..., d_in]`` (the tensor the weight multiplies)."""

    dims: Callable
    input: Callable


SKETCHERS: dict = {}


def register_sketcher(module_type: type, sketcher: Sketcher) -> None:
    SKETCHERS[module_type] = sketcher


def sketcher_for(module: torch.nn.Module) -> Optional[Sketcher]:
    return next((SKETCHERS[c] for c in type(module).__mro__ if c in SKETCHERS), None)


register_sketcher(torch.nn.Linear, Sketcher(dims=lambda m: (m.in_features, m.out_features, m.bias is not None),
                                            input=lambda m, args: args[0]))
try:  # GPT-2 style y = x W + b with W [d_in, d_out]: the same G up to a transpose
    from transformers.pytorch_utils import Conv1D

    register_sketcher(Conv1D, Sketcher(dims=lambda m: (m.weight.shape[0], m.weight.shape[1], m.bias is not None),
                                       input=lambda m, args: args[0]))
except ImportError:
    pass


@dataclass(frozen=True)
class Layer:
    name: str
    module: torch.nn.Module
    d_in: int  # with the bias column
    d_out: int
    bias: bool
    is_head: bool


def _blocks(model) -> tuple:
    """(name, n) of the model's stack of transformer blocks: its ModuleList with the most parameters."""
    best, best_size = None, 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m):
            size = sum(p.numel() for p in m.parameters())
            if size > best_size:
                best, best_size = (name, len(m)), size
    if best is None:
        raise ValueError(f"layers: {type(model).__name__} has no ModuleList of blocks to take the last ones from")
    return best


def select_layers(model, head_module, layers: Union[None, str, int] = None) -> list:
    """The sketched layers, in model order (the head last).

    ``layers``: None or "all" = every module with a registered sketcher, the LM head included;
    "head" = the LM head only (no backward needed); an int n = those inside the last n transformer
    blocks, and the head; any other string = a regular expression searched in the qualified module
    names (e.g. ``"mlp|lm_head"``).
    """
    names = {id(m): n for n, m in model.named_modules()}
    head_name = names.get(id(head_module), "lm_head")
    if isinstance(layers, bool) or not (layers is None or isinstance(layers, (int, str))):
        raise ValueError(f"layers: expected None, 'all', 'head', an int or a regex string, got {layers!r}")
    if isinstance(layers, int):
        if layers < 0:
            raise ValueError(f"layers: the number of last blocks must be >= 0, got {layers}")
        stack, n = _blocks(model)
        keep = tuple(f"{stack}.{i}." for i in range(max(0, n - layers), n))
        wanted = lambda name: name == head_name or name.startswith(keep)  # noqa: E731
    elif layers is None or layers == "all":
        wanted = lambda name: True  # noqa: E731
    elif layers == "head":
        wanted = lambda name: name == head_name  # noqa: E731
    else:
        try:
            pattern = re.compile(layers)
        except re.error as e:
            raise ValueError(f"layers: {layers!r} is not a valid regular expression ({e})") from None
        wanted = lambda name: pattern.search(name) is not None  # noqa: E731
    out = []
    for name, m in model.named_modules():
        if m is head_module or not wanted(name):
            continue
        sk = sketcher_for(m)
        if sk is not None:
            d_in, d_out, bias = sk.dims(m)
            out.append(Layer(name, m, d_in + bias, d_out, bias, False))
    if wanted(head_name):
        v, d = head_module.weight.shape
        bias = getattr(head_module, "bias", None) is not None
        out.append(Layer(head_name, head_module, d + bias, v, bias, True))
    if not out:
        raise ValueError(f"layers: {layers!r} selects no layer of {type(model).__name__}")
    return out


def exact_sq_norms(x: torch.Tensor, deltas: Iterable, cu: list, d_out: int, mode: str = "auto") -> torch.Tensor:
    """float64 [S]: ‖Σ_{t ∈ s} δ_t x_tᵀ‖² per segment of ``cu`` (python ints), with δ given as column
    blocks [N, d_c] (their widths summing to d_out). ``mode``: "ghost" = Σ (δδᵀ) ⊙ (x xᵀ) over the
    segment's T×T block; "direct" = form G; "auto" = whichever does fewer multiplications."""
    if mode not in ("auto", "ghost", "direct"):
        raise ValueError(f"mode: expected 'auto', 'ghost' or 'direct', got {mode!r}")
    lengths = [e - s for s, e in zip(cu[:-1], cu[1:])]
    d_in = x.shape[1]
    if mode == "auto":
        ghost_cost = sum(t * t for t in lengths) * (d_in + d_out)
        mode = "ghost" if ghost_cost < sum(lengths) * d_in * d_out else "direct"
    x = x.double()
    segs = list(zip(cu[:-1], cu[1:]))
    if mode == "ghost":
        gram = [x.new_zeros(e - s, e - s) for s, e in segs]
        for d in deltas:
            d = d.double()
            for i, (s, e) in enumerate(segs):
                gram[i] += d[s:e] @ d[s:e].T
        return torch.stack([(g * (x[s:e] @ x[s:e].T)).sum() for g, (s, e) in zip(gram, segs)]) if segs else \
            x.new_zeros(0)
    out = x.new_zeros(len(segs))
    for d in deltas:
        d = d.double()
        for i, (s, e) in enumerate(segs):
            out[i] += (d[s:e].T @ x[s:e]).square().sum()
    return out


def with_bias_column(x: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([x, x.new_ones(x.shape[0], 1)], 1) if bias else x


class GradientSketcher:
    """Sketches (and optionally exact norms) of per-trajectory gradients of a model's layers.

    ``k``: sketch size per side (each layer contributes a k × k block); ``seed``: projections;
    ``layers``: see ``select_layers``. Use ``capture`` around one forward and backward.
    """

    def __init__(self, model, head_module, k: int, *, seed: int = 0, layers: Union[None, str, int] = None,
                 exact: bool = False, exact_mode: str = "auto"):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        if exact_mode not in ("auto", "ghost", "direct"):
            raise ValueError(f"exact_mode: expected 'auto', 'ghost' or 'direct', got {exact_mode!r}")
        self.k, self.seed, self.exact, self.exact_mode = k, int(seed), bool(exact), exact_mode
        self.layers = select_layers(model, head_module, layers)
        self.head = next((i for i, layer in enumerate(self.layers) if layer.is_head), None)
        self.needs_backward = any(not layer.is_head for layer in self.layers)
        self._proj: dict = {}

    @property
    def dim(self) -> int:
        """Length of one trajectory's sketch: the layers' k × k blocks, concatenated in layer order."""
        return len(self.layers) * self.k * self.k

    def head_key(self) -> int:
        return projection_key(self.seed, self.layers[self.head].name, OUT)

    def describe(self) -> dict:
        layers = [{"name": la.name, "d_in": la.d_in, "d_out": la.d_out, "bias": la.bias} for la in self.layers]
        return {"k": self.k, "seed": self.seed, "exact": self.exact, "layers": layers}

    def _projections(self, i: int, device) -> tuple:
        """(P_in, P_out) of layer i, as ±1 in fp32; scaled by 1/k later. Projections run in fp32
        whatever the model's dtype: a sum of d_in bf16 products rounds, one of fp16 can overflow.
        The head's P_out is never materialised (None)."""
        key = (i, device)
        if key not in self._proj:
            la = self.layers[i]
            f32 = torch.float32
            p_in = signs(projection_key(self.seed, la.name, IN), self.k, la.d_in, device, f32)
            p_out = None if la.is_head else signs(projection_key(self.seed, la.name, OUT), self.k, la.d_out, device,
                                                  f32)
            self._proj[key] = (p_in, p_out)
        return self._proj[key]

    def project_in(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """P_in x̃ [N, k] fp32 for layer i's inputs x [N, d_in without bias]."""
        la = self.layers[i]
        p_in, _ = self._projections(i, x.device)
        d = la.d_in - la.bias
        b = x.float() @ p_in[:, :d].T
        if la.bias:
            b += p_in[:, d]
        return b / self.k ** 0.5

    @contextlib.contextmanager
    def capture(self, cu_full: list, device):
        """Hooks the non-head layers during one forward whose rows, flattened, hold one trajectory per
        segment of ``cu_full`` (python ints); yields the ``Capture``, which the backward fills."""
        cap = Capture(self, cu_full, device)
        handles = []
        try:
            for i, la in enumerate(self.layers):
                if not la.is_head:
                    handles.append(la.module.register_forward_hook(cap.forward_hook(i)))
            yield cap
        finally:
            for h in handles:
                h.remove()


class Capture:
    """What one batch's hooks collect: ``sketches`` [S, n_layers, k, k] fp32 and, in exact mode,
    ``exact`` [S] float64 (the sum over layers of ‖G‖²)."""

    def __init__(self, sk: GradientSketcher, cu_full: list, device):
        self.sk = sk
        self.cu_full = [int(c) for c in cu_full]
        self.plan = SegmentPlan(self.cu_full, device)
        n_seg = len(self.cu_full) - 1
        self.sketches = torch.zeros(n_seg, len(sk.layers), sk.k, sk.k, device=device)
        self.exact = torch.zeros(n_seg, dtype=torch.float64, device=device) if sk.exact else None
        self.calls = [0] * len(sk.layers)
        self.backwards = [0] * len(sk.layers)

    def forward_hook(self, i: int):
        la = self.sk.layers[i]
        read = sketcher_for(la.module).input

        def hook(module, args, output):
            self.calls[i] += 1
            if self.sk.exact and self.calls[i] > 1:
                raise RuntimeError(f"{la.name} is called more than once per forward; exact gradient norms need "
                                   "each sketched layer to be used once (sketches alone handle shared layers)")
            if not (isinstance(output, torch.Tensor) and output.requires_grad):
                return
            x = read(module, args).detach()
            x = x.reshape(-1, x.shape[-1])
            b = self.sk.project_in(i, x)
            xe = with_bias_column(x, la.bias) if self.sk.exact else None
            output.register_hook(lambda g: self._backward(i, b, xe, g))
        return hook

    def _backward(self, i: int, b: torch.Tensor, xe: Optional[torch.Tensor], grad: torch.Tensor) -> None:
        la = self.sk.layers[i]
        self.backwards[i] += 1
        delta = grad.reshape(-1, grad.shape[-1])
        _, p_out = self.sk._projections(i, delta.device)
        a = (delta.float() @ p_out.T) / self.sk.k ** 0.5
        self.sketches[:, i] += self.plan.outer(a, b)
        if xe is not None:
            self.exact += exact_sq_norms(xe, [delta], self.cu_full, la.d_out, self.sk.exact_mode)

    def add_head(self, hidden: torch.Tensor, out_sketch: torch.Tensor, cu_scored: list,
                 exact_deltas: Optional[Iterable] = None) -> None:
        """The head's block from its inputs at the scored positions ``hidden`` [N_s, d] (segments
        ``cu_scored``) and the op's per-token P_out f ⊙ (p - e_y) ``out_sketch`` [N_s, k] (the output
        gradient of nll_t, weight 1 per token like the backward); in exact mode ``exact_deltas``
        yields that output gradient in vocabulary blocks [N_s, d_c]."""
        i = self.sk.head
        la = self.sk.layers[i]
        plan = SegmentPlan(cu_scored, hidden.device)
        b = self.sk.project_in(i, hidden)
        self.sketches[:, i] = plan.outer(out_sketch, b)
        self.backwards[i] += 1
        if self.exact is not None:
            self.exact += exact_sq_norms(with_bias_column(hidden, la.bias), exact_deltas, cu_scored, la.d_out,
                                         self.sk.exact_mode)

    def check(self) -> None:
        """Warns about layers that were never called as modules (their sketch is 0, maybe wrongly);
        raises if a called layer got no gradient."""
        for la, n_fwd, n_bwd in zip(self.sk.layers, self.calls, self.backwards):
            if la.is_head:
                continue
            if n_fwd == 0:
                warnings.warn(f"{la.name} was not called as a module during the forward; its sketch is 0", stacklevel=3)
            elif n_bwd < n_fwd:
                raise RuntimeError(f"{la.name}: {n_fwd} forward calls but {n_bwd} output gradients; "
                                   "the backward did not reach it")


@contextlib.contextmanager
def frozen(model):
    """Within the block no parameter requires grad (so a backward forms no weight gradient), and the
    input embeddings' output does, so that hidden states have a graph."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    emb = model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda m, args, out: out.requires_grad_() if not out.requires_grad else out)
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        handle.remove()
        for p, r in zip(params, before):
            p.requires_grad_(r)
