"""A fused native kernel for the factorised Gaussian posterior of Bayes-by-Backprop (CPU, float32).

For a parameter tensor pair (mu, rho) it computes, in one pass,

    sigma = softplus(rho),  eps ~ N(0, I),  out = mu + sigma eps  ("sample")
                                                | sigma eps       ("perturbation", Flipout's dW)
                                                | sigma^2         ("variance", local reparameterization)
    KL(N(mu, sigma^2) || N(loc_p, s^2)) = n (log s - 1/2) - sum log sigma + (|sigma|^2 + |mu - loc_p|^2) / (2 s^2)

keeping eps for the backward pass. The noise is counter-based (``standard_normal(shape, key)`` gives the
same stream): element i is a pure function of (i, key): bits from 7 AES rounds over counter blocks (a variant
of Random123's ARS), turned into normals by Box-Muller from a 23-bit radius uniform and a 24-bit angle
(the C header defines the stream exactly). The key is drawn from torch's default generator, so
``torch.manual_seed`` makes runs repeatable.

Why: on CPU, torch's Mersenne-Twister ``randn`` costs about 4 ns per number here, more than the whole rest of a
Bayesian layer's elementwise work; this kernel draws the noise in about 0.6 ns per number and draws, transforms
and reduces in about 1 ns per weight, on 2 threads of an AVX-512 machine (``scripts/bench_bnn.py`` times the
whole training step).

Two entry points: ``gaussian_posterior`` is the autograd op on one parameter tensor; ``posterior_forward`` /
``posterior_backward`` are the same passes on caller-owned buffers, for fused layers that keep the noise and
the weight sample in their own autograd node (``bnn.BayesLinear``), with ``WORKSPACE`` recycling those buffers.

The C source (``_native/gaussian_posterior.c``: GCC vector extensions, AVX-512 + VAES or AVX2 + AES-NI, OpenMP)
is compiled on first use with the system C compiler into ``$REPARAM_APPS_CACHE`` (default
``~/.cache/reparam_apps``), for the widest instruction set that both torch (``ATEN_CPU_CAPABILITY`` lowers it)
and the CPU support. Where that is not possible (no compiler, no AVX2 or AES, not Linux on x86-64)
``available()`` is False and callers use their eager path. Set ``REPARAM_APPS_NATIVE=0`` to switch it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "unavailable_reason", "simd_width", "usable_for", "new_key", "new_keys", "standard_normal",
           "gaussian_posterior", "posterior_forward", "posterior_backward", "gaussian_kl", "Workspace", "WORKSPACE",
           "KINDS"]

KINDS = {"sample": 0, "perturbation": 1, "variance": 2}
_SOURCE = Path(__file__).with_name("_native") / "gaussian_posterior.c"
_FLAGS = ["-O3", "-fopenmp", "-fPIC", "-shared"]
# One build per instruction set: (torch's capability, the CPU flags it needs, compiler flags).
_BUILDS = {
    "avx512": ("AVX512", {"avx512f", "avx512dq", "avx512bw", "avx512vl", "vaes", "aes"},
               ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-maes", "-mvaes"]),
    "avx2": ("AVX2", {"avx2", "fma", "aes"}, ["-mavx2", "-mfma", "-maes"]),
}
_MAX_NUMEL = 2**32  # a conservative bound: the stream's block counter is 32-bit

_lib: ctypes.CDLL | None = None
_reason: str | None = None  # why the kernel is unavailable (None: not tried yet or available)
_tried = False


def _cache_dir() -> Path:
    if os.environ.get("REPARAM_APPS_CACHE"):
        return Path(os.environ["REPARAM_APPS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reparam_apps"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _choose_build() -> str | None:
    """The widest build that torch's dispatch level allows and the CPU supports."""
    torch_isa, flags = torch.backends.cpu.get_cpu_capability(), _cpu_flags()
    allowed = ["avx512", "avx2"] if torch_isa == "AVX512" else ["avx2"] if torch_isa == "AVX2" else []
    return next((name for name in allowed if _BUILDS[name][1] <= flags), None)


def _compile(compiler: str, build: str) -> Path:
    source = _SOURCE.read_bytes()
    flags = [*_FLAGS, *_BUILDS[build][2]]
    digest = hashlib.sha256(source + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"gaussian_posterior-{build}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *flags, str(_SOURCE), "-o", tmp], capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no output"])[0]
            raise RuntimeError(f"{compiler} failed: {first}")
        os.replace(tmp, target)  # atomic: a concurrent process sees no half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> ctypes.CDLL | None:
    global _lib, _reason, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("REPARAM_APPS_NATIVE", "1") == "0":
        _reason = "switched off by REPARAM_APPS_NATIVE=0"
        return None
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        _reason = f"needs Linux on x86-64, this is {sys.platform} on {platform.machine()}"
        return None
    build = _choose_build()
    if build is None:
        isa = torch.backends.cpu.get_cpu_capability()
        missing = sorted(_BUILDS["avx2"][1] - _cpu_flags())
        _reason = (f"needs AVX2, FMA and AES-NI: torch dispatches to {isa} (ATEN_CPU_CAPABILITY can lower it)"
                   if isa not in ("AVX2", "AVX512") else
                   f"needs AVX2, FMA and AES-NI: /proc/cpuinfo lacks {', '.join(missing) or 'its flags line'}")
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        _reason = "no C compiler found (set CC or install gcc)"
        return None
    try:
        lib = ctypes.CDLL(str(_compile(compiler, build)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _reason = f"could not build the kernel: {err}"
        warnings.warn(f"reparam_apps.native: {_reason}; using the eager torch path", RuntimeWarning, stacklevel=3)
        return None
    p, i64, u32, c_int, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_int, ctypes.c_float
    lib.posterior_forward.argtypes = [p, p, p, p, i64, u32, u32, p, p, p, p, i64, u32, u32, c_int, f32, p]
    lib.posterior_forward.restype = None
    segment = [p, p, p, p, p, p, i64, u32, u32]  # grad_out, mu, rho, eps, grad_mu, grad_rho, n, key
    lib.posterior_backward.argtypes = [*segment, *segment, c_int, f32, f32, f32]
    lib.posterior_backward.restype = None
    lib.standard_normal.argtypes = [p, i64, u32, u32, i64]
    lib.standard_normal.restype = None
    lib.simd_width.argtypes = []
    lib.simd_width.restype = c_int
    _lib = lib
    return lib


def available() -> bool:
    """True when the native kernel is built and loaded (builds it on the first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why ``available()`` is False (None when it is True)."""
    _load()
    return None if _lib is not None else _reason


def simd_width() -> int:
    """Float lanes of the loaded build: 16 (AVX-512) or 8 (AVX2); 0 when the kernel is unavailable."""
    lib = _load()
    return 0 if lib is None else int(lib.simd_width())


def usable_for(*tensors: Tensor) -> bool:
    """The kernel handles these tensors: float32, contiguous, on the CPU, and the kernel is available."""
    for t in tensors:
        if t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous() or t.numel() >= _MAX_NUMEL:
            return False
    return _lib is not None or available()


def new_key() -> tuple[int, int]:
    """Two 32-bit words from torch's default generator: the key of one noise stream."""
    k0, k1 = torch.empty(2, dtype=torch.int64).random_(0, 2**32).tolist()
    return k0, k1


def new_keys(count: int) -> list[tuple[int, int]]:
    """``count`` keys from one draw: the same keys as ``count`` calls of ``new_key``, in order."""
    words = torch.empty(2 * count, dtype=torch.int64).random_(0, 2**32).tolist()
    return list(zip(words[::2], words[1::2], strict=True))


def _words(key: tuple[int, int]) -> tuple[int, int]:
    return int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF


def _require() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native kernel is unavailable: {_reason}")
    return lib


def standard_normal(shape: torch.Size | tuple[int, ...], key: tuple[int, int] | None = None,
                    offset: int = 0) -> Tensor:
    """eps ~ N(0, I) of ``shape`` (float32, CPU): elements ``offset`` .. ``offset + numel - 1`` (``offset`` a
    multiple of 32) of the counter-based stream ``key`` (a new key if None); with offset 0, the noise
    ``gaussian_posterior`` uses for the same key."""
    lib = _require()
    if offset < 0 or offset % 32:
        raise ValueError(f"offset must be a non-negative multiple of 32, got {offset}")
    out = torch.empty(shape, dtype=torch.float32)
    k0, k1 = _words(new_key() if key is None else key)
    lib.standard_normal(out.data_ptr(), out.numel(), k0, k1, offset // 32)
    return out


class _Recycle:
    """Held by an autograd ctx: hands its buffers back to the workspace when the ctx (the graph node) is freed."""

    __slots__ = ("workspace", "tensors")

    def __init__(self, workspace: Workspace, tensors: tuple[Tensor, ...]):
        self.workspace, self.tensors = workspace, tensors

    def __del__(self):
        self.workspace.give_back(*self.tensors)


class Workspace:
    """Recycled float32 buffers for tensors that only one autograd node holds (the noise, a fused layer's weight
    sample): ``take`` one, and ``recycle_with(node_ctx, ...)`` hands the buffers back when that node is freed, so a
    training loop reuses the same mapped, cache-warm buffers every step (with the pool off, the 784-400-400-10
    step of scripts/bench_bnn.py was 8-14% slower). A buffer still referenced by a live graph is never handed out
    again.
    The pool keeps at most ``max_free`` buffers of a shape and ``max_bytes`` in all; ``clear()`` empties it
    (e.g. after a hyperparameter sweep over layer sizes)."""

    def __init__(self, min_numel: int = 16384, max_free: int = 4, max_bytes: int = 256 * 2**20):
        self.min_numel, self.max_free, self.max_bytes = min_numel, max_free, max_bytes
        self._free: dict[tuple[int, ...], list[Tensor]] = {}
        self._bytes = 0  # held in the free lists

    def take(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """An uninitialised float32 CPU tensor of ``shape``: a recycled one when there is one."""
        free = self._free.get(tuple(shape))
        if free:
            try:
                t = free.pop()
                self._bytes -= 4 * t.numel()
                return t
            except IndexError:  # another thread took the last one
                pass
        return torch.empty(shape, dtype=torch.float32)

    def give_back(self, *tensors: Tensor) -> None:
        """Return buffers that nothing else references any more."""
        for t in tensors:
            if t.numel() >= self.min_numel and self._bytes + 4 * t.numel() <= self.max_bytes:
                free = self._free.setdefault(tuple(t.shape), [])
                if len(free) < self.max_free:
                    free.append(t)
                    self._bytes += 4 * t.numel()

    def recycle_with(self, ctx: object, *tensors: Tensor | None) -> None:
        """Return ``tensors`` to the pool once the autograd ``ctx`` holding them (a graph node) is freed."""
        ctx._recycle = _Recycle(self, tuple(t for t in tensors if t is not None))

    def clear(self) -> None:
        """Drop every pooled buffer (buffers held by live graphs are not affected)."""
        self._free.clear()
        self._bytes = 0


WORKSPACE = Workspace()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def posterior_forward(mu: Tensor, rho: Tensor, out: Tensor, eps: Tensor | None, kind: int, prior_loc: float,
                      key: tuple[int, int], second: tuple[Tensor, Tensor, Tensor, Tensor | None] | None = None,
                      second_key: tuple[int, int] | None = None) -> tuple[float, float, float]:
    """The forward pass into caller-owned buffers (no autograd, no checks beyond the kernel's needs): ``out`` gets
    the ``kind`` output (an int of ``KINDS``), ``eps`` the noise of stream ``key`` (None for "variance" or to not
    keep it). ``second`` = (mu2, rho2, out2, eps2) is a second tensor (a layer's bias) with the stream of
    ``second_key``, done in the same call; the numbers are those of two separate calls. Returns
    (sum log sigma, sum sigma^2, sum (mu - prior_loc)^2) over both, for ``gaussian_kl``."""
    if second is not None and second_key is None:
        raise ValueError("posterior_forward needs second_key for the second tensor's noise stream")
    lib = _lib if _lib is not None else _require()
    sums = (ctypes.c_double * 3)()
    k0, k1 = _words(key)
    mu2, rho2, out2, eps2 = second if second is not None else (None, None, None, None)
    j0, j1 = _words(second_key) if second_key is not None else (0, 0)
    lib.posterior_forward(mu.data_ptr(), rho.data_ptr(), out.data_ptr(), _ptr(eps), mu.numel(), k0, k1, _ptr(mu2),
                          _ptr(rho2), _ptr(out2), _ptr(eps2), 0 if mu2 is None else mu2.numel(), j0, j1, kind,
                          prior_loc, sums)
    return sums[0], sums[1], sums[2]


def gaussian_kl(numel: int, sums: tuple[float, float, float], prior_scale: float) -> float:
    """KL(N(mu, sigma^2) || N(loc_p, s^2)) summed over ``numel`` elements from ``posterior_forward``'s sums:
    n (log s - 1/2) - sum log sigma + (sum sigma^2 + sum (mu - loc_p)^2) / (2 s^2)."""
    sum_log_sigma, sum_sigma2, sum_centred2 = sums
    return numel * (math.log(prior_scale) - 0.5) - sum_log_sigma + (sum_sigma2 + sum_centred2) / (2.0 * prior_scale**2)


def posterior_backward(grad_out: Tensor | None, mu: Tensor, rho: Tensor, eps: Tensor | None, grad_mu: Tensor,
                       grad_rho: Tensor, kind: int, prior_loc: float, grad_kl: float, prior_scale: float,
                       key: tuple[int, int] | None = None,
                       second: tuple[Tensor | None, Tensor, Tensor, Tensor | None, Tensor, Tensor] | None = None,
                       second_key: tuple[int, int] | None = None) -> None:
    """The backward pass into caller-owned ``grad_mu`` and ``grad_rho``: the gradients of
    <grad_out, out> + grad_kl KL (``grad_out`` None: the KL term alone; it must be contiguous). ``eps`` is the
    forward pass's noise, or None to draw it again from the forward pass's ``key`` (less memory, more compute).
    ``second`` = (grad_out2, mu2, rho2, eps2, grad_mu2, grad_rho2) for the forward pass's second tensor."""
    g2, mu2, rho2, eps2, gm2, gr2 = second if second is not None else (None,) * 6
    if kind != KINDS["variance"] and ((eps is None and key is None)
                                      or (mu2 is not None and eps2 is None and second_key is None)):
        raise ValueError("posterior_backward needs the forward pass's eps or its key")
    lib = _lib if _lib is not None else _require()
    k0, k1 = _words(key) if key is not None else (0, 0)
    j0, j1 = _words(second_key) if second_key is not None else (0, 0)
    lib.posterior_backward(_ptr(grad_out), mu.data_ptr(), rho.data_ptr(), _ptr(eps), grad_mu.data_ptr(),
                           grad_rho.data_ptr(), mu.numel(), k0, k1, _ptr(g2), _ptr(mu2), _ptr(rho2), _ptr(eps2),
                           _ptr(gm2), _ptr(gr2), 0 if mu2 is None else mu2.numel(), j0, j1, kind, prior_loc, grad_kl,
                           1.0 / prior_scale**2)


class _GaussianPosterior(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu: Tensor, rho: Tensor, kind: int, loc_p: float, scale_p: float, key: tuple[int, int]):
        out = torch.empty_like(mu)
        eps = None if kind == KINDS["variance"] else WORKSPACE.take(mu.shape)  # only this node holds eps
        kl = gaussian_kl(mu.numel(), posterior_forward(mu, rho, out, eps, kind, loc_p, key), scale_p)
        ctx.save_for_backward(mu, rho)
        ctx.eps, ctx.kind, ctx.loc_p, ctx.scale_p = eps, kind, loc_p, scale_p
        WORKSPACE.recycle_with(ctx, eps)
        return out, torch.scalar_tensor(kl, dtype=mu.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor | None, grad_kl: Tensor | None):
        mu, rho = ctx.saved_tensors
        grad_mu, grad_rho = torch.empty_like(mu), torch.empty_like(rho)
        posterior_backward(None if grad_out is None else grad_out.contiguous(), mu, rho, ctx.eps, grad_mu, grad_rho,
                           ctx.kind, ctx.loc_p, 0.0 if grad_kl is None else float(grad_kl), ctx.scale_p)
        return grad_mu, grad_rho, None, None, None, None


def gaussian_posterior(mu: Tensor, rho: Tensor, kind: str = "sample", prior_loc: float = 0.0,
                       prior_scale: float = 1.0, key: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """(out, KL) for q = N(mu, softplus(rho)^2) and the prior N(prior_loc, prior_scale^2); see the module doc.
    ``out`` is mu + sigma eps ("sample"), sigma eps ("perturbation") or sigma^2 ("variance"); both outputs are
    differentiable in mu and rho. Needs ``usable_for(mu, rho)``; ``key`` defaults to ``new_key()``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be positive, got {prior_scale}")
    if mu.shape != rho.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and rho {tuple(rho.shape)} must have the same shape")
    if not usable_for(mu, rho):
        raise ValueError("gaussian_posterior needs contiguous float32 CPU tensors and the native kernel "
                         f"(available: {available()}, reason: {unavailable_reason()})")
    key = _words(new_key() if key is None else key)
    return _GaussianPosterior.apply(mu, rho, KINDS[kind], float(prior_loc), float(prior_scale), key)
