"""A fused native kernel for the factorised Gaussian posterior of Bayes-by-Backprop (CPU, float32).

For a parameter tensor pair (mu, rho) it computes, in one pass,

    sigma = softplus(rho),  eps ~ N(0, I),  out = mu + sigma eps  ("sample")
                                                | sigma eps       ("perturbation", Flipout's dW)
                                                | sigma^2         ("variance", local reparameterization)
    KL(N(mu, sigma^2) || N(loc_p, s^2)) = n (log s - 1/2) - sum log sigma + (|sigma|^2 + |mu - loc_p|^2) / (2 s^2)

keeping eps for the backward pass. The noise is counter-based (``standard_normal(shape, key)`` gives the
same stream): element i is a pure function of (i, key), two 24-bit uniforms from a keyed integer hash
turned into normals by Box-Muller, like torch's CPU ``normal_``. The key is drawn from torch's default
generator, so ``torch.manual_seed`` makes runs repeatable on one machine.

Why: on CPU, torch's Mersenne-Twister ``randn`` costs 4-7 ns per number here, more than the whole rest of a
Bayesian layer's elementwise work. Measured on 2 threads for the 478k parameters of a 784-400-400-10 network
(hot cache): 1.1 ms forward and 0.6 ms backward, against 2.1 ms for ``torch.randn`` of the noise alone.

The C source (``_native/gaussian_posterior.c``, AVX2 + FMA, glibc's libmvec, OpenMP) is compiled on first use
with the system C compiler into ``$REPARAM_APPS_CACHE`` (default ``~/.cache/reparam_apps``). Where that is not
possible (no compiler, no AVX2, not Linux/glibc) ``available()`` is False and callers use their eager path.
Set ``REPARAM_APPS_NATIVE=0`` to switch the kernel off.
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

__all__ = ["available", "unavailable_reason", "new_key", "standard_normal", "gaussian_posterior", "KINDS"]

KINDS = {"sample": 0, "perturbation": 1, "variance": 2}
_SOURCE = Path(__file__).with_name("_native") / "gaussian_posterior.c"
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared"]
_LIBS = ["-lmvec", "-lm"]
_MAX_NUMEL = 2**32  # the counters are 32-bit

_lib: ctypes.CDLL | None = None
_reason: str | None = None  # why the kernel is unavailable (None: not tried yet or available)
_tried = False


def _cache_dir() -> Path:
    if os.environ.get("REPARAM_APPS_CACHE"):
        return Path(os.environ["REPARAM_APPS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reparam_apps"


def _compile(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([compiler, *_FLAGS, *_LIBS]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"gaussian_posterior-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", tmp, *_LIBS], capture_output=True,
                                text=True, timeout=300)
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
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        _reason = f"needs a CPU with AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        _reason = "no C compiler found (set CC or install gcc)"
        return None
    try:
        lib = ctypes.CDLL(str(_compile(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _reason = f"could not build the kernel: {err}"
        warnings.warn(f"reparam_apps.native: {_reason}; using the eager torch path", RuntimeWarning, stacklevel=3)
        return None
    p, i64, u32, c_int, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_int, ctypes.c_float
    lib.posterior_forward.argtypes = [p, p, p, p, i64, u32, u32, c_int, f32, p]
    lib.posterior_forward.restype = None
    lib.posterior_backward.argtypes = [p, p, p, p, p, p, i64, c_int, f32, f32, f32]
    lib.posterior_backward.restype = None
    lib.standard_normal.argtypes = [p, i64, u32, u32]
    lib.standard_normal.restype = None
    _lib = lib
    return lib


def available() -> bool:
    """True when the native kernel is built and loaded (builds it on the first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why ``available()`` is False (None when it is True)."""
    _load()
    return None if _lib is not None else _reason


def usable_for(*tensors: Tensor) -> bool:
    """The kernel handles these tensors: float32, contiguous, on the CPU, and the kernel is available."""
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors)
            and tensors[0].numel() < _MAX_NUMEL and available())


def new_key() -> tuple[int, int]:
    """Two 32-bit words from torch's default generator: the key of one noise stream."""
    k = torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist()
    return int(k[0]), int(k[1])


def standard_normal(shape: torch.Size | tuple[int, ...], key: tuple[int, int] | None = None) -> Tensor:
    """eps ~ N(0, I) of ``shape`` (float32, CPU) from the counter-based stream ``key`` (a new key if None):
    the noise ``gaussian_posterior`` uses for the same key."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the native kernel is unavailable: {_reason}")
    out = torch.empty(shape, dtype=torch.float32)
    key = new_key() if key is None else key
    lib.standard_normal(out.data_ptr(), out.numel(), key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF)
    return out


class _GaussianPosterior(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu: Tensor, rho: Tensor, kind: int, loc_p: float, scale_p: float, key: tuple[int, int]):
        out = torch.empty_like(mu)
        eps = None if kind == KINDS["variance"] else torch.empty_like(mu)
        sums = (ctypes.c_double * 3)()
        _lib.posterior_forward(mu.data_ptr(), rho.data_ptr(), out.data_ptr(), None if eps is None else eps.data_ptr(),
                               mu.numel(), key[0], key[1], kind, loc_p, sums)
        sum_log_sigma, sum_sigma2, sum_centred2 = sums
        kl = (mu.numel() * (math.log(scale_p) - 0.5) - sum_log_sigma
              + (sum_sigma2 + sum_centred2) / (2.0 * scale_p**2))
        ctx.save_for_backward(mu, rho, eps)
        ctx.kind, ctx.loc_p, ctx.inv_var = kind, loc_p, 1.0 / scale_p**2
        return out, torch.tensor(kl, dtype=mu.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor | None, grad_kl: Tensor | None):
        mu, rho, eps = ctx.saved_tensors
        grad_out = torch.zeros_like(mu) if grad_out is None else grad_out.contiguous()
        g_kl = 0.0 if grad_kl is None else float(grad_kl)
        grad_mu, grad_rho = torch.empty_like(mu), torch.empty_like(rho)
        _lib.posterior_backward(grad_out.data_ptr(), mu.data_ptr(), rho.data_ptr(),
                                None if eps is None else eps.data_ptr(), grad_mu.data_ptr(), grad_rho.data_ptr(),
                                mu.numel(), ctx.kind, ctx.loc_p, g_kl, ctx.inv_var)
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
    key = new_key() if key is None else key
    key = (int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF)
    return _GaussianPosterior.apply(mu, rho, KINDS[kind], float(prior_loc), float(prior_scale), key)
