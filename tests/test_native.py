"""The core's native Gaussian-posterior kernel against independent references: its noise stream against a
from-scratch AES + Box-Muller reference in numpy/float64 (the AES itself checked on the FIPS-197 vector), the
N(0, 1) law of that noise (Kolmogorov-Smirnov, moments, independence), and the value, KL and gradients of the
fused op against float64 autograd through softplus on the same noise."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from reparam_apps import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel: {native.unavailable_reason()}")

N = 200_000
# Tolerances from the sampling distributions at n = N: 5 standard errors (two-sided p ~ 6e-7 per check).
SE = 1 / math.sqrt(N)


# -- an independent reference of the noise stream: AES rounds in numpy, Box-Muller in float64 ---------------------
def _xtime(a: int) -> int:
    return ((a << 1) ^ (0x1B if a & 0x80 else 0)) & 0xFF


def _sbox() -> np.ndarray:
    """AES S-box from its definition: inverse in GF(2^8) mod x^8 + x^4 + x^3 + x + 1, then the affine map."""
    def gmul(a, b):
        p = 0
        while b:
            p, a, b = (p ^ a) if b & 1 else p, _xtime(a), b >> 1
        return p
    inv = [0] + [next(b for b in range(1, 256) if gmul(a, b) == 1) for a in range(1, 256)]
    rotl = lambda x, k: ((x << k) | (x >> (8 - k))) & 0xFF  # noqa: E731
    return np.array([b ^ rotl(b, 1) ^ rotl(b, 2) ^ rotl(b, 3) ^ rotl(b, 4) ^ 0x63 for b in inv], dtype=np.uint8)


SBOX = _sbox()
SHIFT_ROWS = np.array([4 * ((c + r) % 4) + r for c in range(4) for r in range(4)])  # state byte 4 col + row
XTIME = np.array([_xtime(a) for a in range(256)], dtype=np.uint8)


def aes_round(state: np.ndarray, key: np.ndarray, last: bool = False) -> np.ndarray:
    """One AES encryption round on (..., 16) bytes: SubBytes, ShiftRows, MixColumns (not in the last), AddRoundKey."""
    s = SBOX[state][..., SHIFT_ROWS]
    if not last:
        a = s.reshape(*s.shape[:-1], 4, 4)  # (..., column, row)
        a0, a1, a2, a3 = (a[..., r] for r in range(4))
        t = a0 ^ a1 ^ a2 ^ a3
        s = np.stack([a0 ^ t ^ XTIME[a0 ^ a1], a1 ^ t ^ XTIME[a1 ^ a2], a2 ^ t ^ XTIME[a2 ^ a3],
                      a3 ^ t ^ XTIME[a3 ^ a0]], -1).reshape(s.shape)
    return s ^ key


def test_reference_aes_matches_fips_197():
    """AES-128 from the round above and the standard key schedule: the FIPS-197 appendix C.1 vector."""
    rcon, words = [1, 2, 4, 8, 16, 32, 64, 128, 27, 54], [list(range(4 * i, 4 * i + 4)) for i in range(4)]
    for i in range(4, 44):
        t = list(words[i - 1])
        if i % 4 == 0:
            t = [int(SBOX[b]) for b in t[1:] + t[:1]]
            t[0] ^= rcon[i // 4 - 1]
        words.append([a ^ b for a, b in zip(words[i - 4], t, strict=True)])
    keys = [np.array(sum(words[4 * r: 4 * r + 4], []), dtype=np.uint8) for r in range(11)]
    state = np.frombuffer(bytes.fromhex("00112233445566778899aabbccddeeff"), dtype=np.uint8) ^ keys[0]
    for r in range(1, 11):
        state = aes_round(state, keys[r], last=r == 10)
    assert bytes(state).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


def reference_normals(n: int, key: tuple[int, int], offset: int = 0) -> np.ndarray:
    """Elements offset .. offset + n - 1 of the stream, as the kernel's header defines it, in float64."""
    weyl = np.array([0x9E3779B9, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A], dtype=np.uint64)
    k = np.array([key[0], key[1], 0x243F6A88, 0x85A308D3], dtype=np.uint64)
    round_keys = [((k + r * weyl) % 2**32).astype("<u4").view(np.uint8) for r in range(8)]
    t = np.arange(offset // 32, (offset + n + 31) // 32, dtype=np.uint32)
    blocks = np.zeros((len(t), 8, 4), dtype="<u4")  # block (j, t, 0, 0)
    blocks[:, :, 0], blocks[:, :, 1] = np.arange(8, dtype=np.uint32), t[:, None]
    state = blocks.view(np.uint8).reshape(len(t), 8, 16) ^ round_keys[0]
    for r in range(1, 8):
        state = aes_round(state, round_keys[r], last=r == 7)
    words = np.ascontiguousarray(state).view("<u4").reshape(len(t), 32).astype(np.float64)
    h_a, h_b = np.floor(words[:, :16] / 512), np.floor(words[:, 16:] / 256)  # pairs p = 0..15: 23 and 24 bits
    radius = np.sqrt(-2 * np.log((h_a + 0.5) * 2.0**-23))
    quadrant, f = np.floor(h_b / 2**22), h_b % 2**22
    phi = quadrant * np.pi / 2 + ((f + 0.5) * 2.0**-22 - 0.5) * np.pi / 2
    p = np.array([(k // 16) * 8 + k % 8 for k in range(32)])  # element k of a 32-block takes pair p[k]
    use_sin = np.array([(k % 16) >= 8 for k in range(32)])
    out = np.where(use_sin, radius[:, p] * np.sin(phi[:, p]), radius[:, p] * np.cos(phi[:, p])).reshape(-1)
    start = offset - 32 * (offset // 32)
    return out[start:start + n]


@pytest.mark.parametrize(("n", "key", "offset"), [(100_000 + 17, (12345, 678), 0), (100, (2**32 - 1, 0), 320)])
def test_noise_stream_matches_the_reference(n, key, offset):
    """Bits, pairing and Box-Muller exactly as documented; the float32 math (inlined exp/log/sin/cos series, each
    truncated below 3e-8) within 8 float32 roundings (2^-24 = 6e-8 each) of float64, relative, everywhere."""
    eps = native.standard_normal((n,), key, offset=offset).double().numpy()
    np.testing.assert_allclose(eps, reference_normals(n, key, offset), rtol=8 * 2.0**-24, atol=1e-9)


def test_noise_is_standard_normal():
    eps = native.standard_normal((N,), key=(12345, 678)).double()
    assert stats.kstest(eps.numpy(), "norm").statistic < 1.95 * SE  # KS 0.1% critical value 1.95 / sqrt(n)
    assert abs(eps.mean().item()) < 5 * SE
    assert abs(eps.var().item() - 1) < 5 * math.sqrt(2) * SE  # var of the sample variance: 2 / n
    assert abs(stats.kurtosis(eps.numpy())) < 5 * math.sqrt(24) * SE  # excess kurtosis: var 24 / n
    assert eps.abs().max().item() <= math.sqrt(-2 * math.log(2.0**-24)) + 1e-4  # 23-bit uniforms bound the tails


def test_noise_has_no_correlations():
    eps = native.standard_normal((N,), key=(1, 2)).double()
    blocks = eps.reshape(-1, 16)
    pairs = {
        "neighbours": (eps[:-1], eps[1:]),
        "Box-Muller cos/sin of one pair": (blocks[:, :8].reshape(-1), blocks[:, 8:].reshape(-1)),
        "squares of a pair": (blocks[:, :8].reshape(-1) ** 2, blocks[:, 8:].reshape(-1) ** 2),
        "adjacent keys": (eps, native.standard_normal((N,), key=(1, 3)).double()),
    }
    for name, (a, b) in pairs.items():
        r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(len(a)), name


def test_noise_is_deterministic_per_key_and_drawn_from_torch_seed():
    a = native.standard_normal((1000,), key=(7, 8))
    assert torch.equal(a, native.standard_normal((1000,), key=(7, 8)))
    assert not torch.equal(a, native.standard_normal((1000,), key=(7, 9)))
    # A prefix of a stream is the stream of a shorter tensor (counter-based, tail blocks included).
    torch.testing.assert_close(native.standard_normal((37,), key=(7, 8)), a[:37], rtol=0, atol=0)
    torch.manual_seed(0)
    k1, k2 = native.new_key(), native.new_key()
    torch.manual_seed(0)
    assert native.new_key() == k1
    torch.manual_seed(0)
    assert native.new_keys(2) == [k1, k2]  # one draw, the same keys


def _reference(mu, rho, eps, kind, loc_p, scale_p):
    """float64 autograd through the textbook formulas."""
    sigma = F.softplus(rho)
    out = {"sample": mu + sigma * eps, "perturbation": sigma * eps, "variance": sigma**2}[kind]
    kl = (math.log(scale_p) - sigma.log() + (sigma**2 + (mu - loc_p) ** 2) / (2 * scale_p**2) - 0.5).sum()
    return out, kl


@pytest.mark.parametrize("kind", list(native.KINDS))
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 70_001])  # tails, whole blocks, the multithreaded size
@pytest.mark.parametrize("regime", ["mixed", "small sigma"])
def test_value_kl_and_gradients_match_autograd(kind, n, regime):
    gen = torch.Generator().manual_seed(n)
    mu = (torch.randn(n, generator=gen) * 0.3).requires_grad_()
    if regime == "mixed":  # every softplus branch: rho > 20, moderate, and very negative
        rho = (torch.randn(n, generator=gen) * 3 - 3).clamp(-30, 30)
        rho[:3] = torch.tensor([-30.0, 25.0, 0.0])[: min(3, n)]
    else:  # rho <= -4 everywhere: the kernel's series path for softplus and log sigma
        rho = torch.rand(n, generator=gen) * -12 - 4
        rho[:2] = torch.tensor([-4.0, -80.0])[: min(2, n)]
    rho.requires_grad_()
    key, loc_p, scale_p = (11, 22), 0.1, 0.7
    out, kl = native.gaussian_posterior(mu, rho, kind, loc_p, scale_p, key=key)
    eps = native.standard_normal((n,), key).double()
    mu64, rho64 = mu.detach().double().requires_grad_(), rho.detach().double().requires_grad_()
    ref_out, ref_kl = _reference(mu64, rho64, eps, kind, loc_p, scale_p)
    torch.testing.assert_close(out.double(), ref_out, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(kl.double(), ref_kl, rtol=1e-5, atol=1e-3)
    g_out = torch.randn(n, generator=gen)
    g_mu, g_rho = torch.autograd.grad(out * g_out, (mu, rho), torch.ones(n), retain_graph=True)
    g_mu_kl, g_rho_kl = torch.autograd.grad(kl * 0.3, (mu, rho))
    r_mu, r_rho = torch.autograd.grad((ref_out * g_out.double()).sum() + 0.3 * ref_kl, (mu64, rho64))
    torch.testing.assert_close((g_mu + g_mu_kl).double(), r_mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((g_rho + g_rho_kl).double(), r_rho, rtol=1e-4, atol=1e-5)


def test_kl_alone_has_gradients_and_bad_input_is_rejected():
    mu, rho = torch.zeros(5, requires_grad=True), torch.full((5,), -1.0, requires_grad=True)
    _, kl = native.gaussian_posterior(mu, rho)
    kl.backward()  # no gradient reached the sample: the backward pass must treat it as zero
    assert mu.grad is not None and torch.isfinite(rho.grad).all()
    with pytest.raises(ValueError, match="unknown kind"):
        native.gaussian_posterior(mu, rho, "weights")
    with pytest.raises(ValueError, match="prior_scale must be positive"):
        native.gaussian_posterior(mu, rho, prior_scale=0.0)
    with pytest.raises(ValueError, match="float32 CPU"):
        native.gaussian_posterior(mu.double(), rho.double())
    assert not native.usable_for(torch.zeros(4, 4).t())  # not contiguous


def test_switch_off_falls_back_cleanly():
    code = ("from reparam_apps import native; import bnn, torch;"
            "print(native.available(), native.unavailable_reason());"
            "layer = bnn.BayesLinear(3, 2); y = layer(torch.randn(4, 3)); bnn.model_kl(layer).backward()")
    env = {**os.environ, "REPARAM_APPS_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False switched off by REPARAM_APPS_NATIVE=0"


def test_bayes_linear_uses_the_kernel_with_its_noise_stream():
    """The layer's sample is mu + softplus(rho) eps with eps from the keys it drew (weight first, then bias)."""
    import bnn

    layer = bnn.BayesLinear(20, 7, init_rho=-3.0)
    x = torch.randn(5, 20)
    torch.manual_seed(4)
    y = layer(x)
    kl = bnn.model_kl(layer)
    torch.manual_seed(4)
    eps_w = native.standard_normal((7, 20), native.new_key())
    eps_b = native.standard_normal((7,), native.new_key())
    with torch.no_grad():
        w = layer.weight_mu + F.softplus(layer.weight_rho) * eps_w
        b = layer.bias_mu + F.softplus(layer.bias_rho) * eps_b
        ref_kl = sum(torch.distributions.kl_divergence(torch.distributions.Normal(m, F.softplus(r)),
                                                       torch.distributions.Normal(0.0, 1.0)).sum()
                     for m, r in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)))
    torch.testing.assert_close(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl, ref_kl, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(native.simd_width() != 16, reason="needs the AVX-512 build to compare with the AVX2 one")
def test_avx2_and_avx512_builds_compute_the_same_numbers():
    """The stream does not depend on the SIMD width: the AVX2 build (forced through torch's ATEN_CPU_CAPABILITY)
    gives the same noise as the AVX-512 build, bit for bit. The weight sample and KL sums agree to float32
    rounding: softplus's series path is chosen per vector of W lanes, and the sums add lanes in another order."""
    code = ("import json, torch; from reparam_apps import native; assert native.simd_width() == 8;"
            "g = torch.Generator().manual_seed(0); mu = torch.randn(1000, generator=g);"
            "rho = torch.rand(1000, generator=g) * 8 - 9; out = torch.empty(1000);"
            "s = native.posterior_forward(mu, rho, out, None, 0, 0.1, (3, 4));"
            "print(json.dumps([native.standard_normal((999,), (5, 6)).tolist(), out.tolist(), s]))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    noise, out, sums = json.loads(res.stdout)
    g = torch.Generator().manual_seed(0)
    mu, rho = torch.randn(1000, generator=g), torch.rand(1000, generator=g) * 8 - 9
    here = torch.empty(1000)
    sums_here = native.posterior_forward(mu, rho, here, None, 0, 0.1, (3, 4))
    assert torch.equal(torch.tensor(noise), native.standard_normal((999,), (5, 6)))
    torch.testing.assert_close(torch.tensor(out), here, rtol=4 * 2.0**-24, atol=1e-7)
    assert sums == pytest.approx(list(sums_here), rel=1e-6)


def test_second_tensor_has_its_own_stream_and_backward_can_redraw_the_noise():
    """posterior_forward's second tensor (a layer's bias) gets the stream of its own key, the numbers of a separate
    call; the backward pass gives the same gradients from the stored eps and from the keys alone."""
    gen = torch.Generator().manual_seed(1)
    mu, rho = torch.randn(50, generator=gen), torch.rand(50, generator=gen) * 6 - 8
    mu2, rho2 = torch.randn(7, generator=gen), torch.rand(7, generator=gen) * 6 - 8
    out, eps, out2, eps2 = torch.empty(50), torch.empty(50), torch.empty(7), torch.empty(7)
    key, key2 = (77, 88), (99, 11)
    sums = native.posterior_forward(mu, rho, out, eps, 0, 0.0, key, second=(mu2, rho2, out2, eps2), second_key=key2)
    assert torch.equal(eps, native.standard_normal((50,), key))
    assert torch.equal(eps2, native.standard_normal((7,), key2))
    alone = torch.empty(7)
    sums2 = native.posterior_forward(mu2, rho2, alone, None, 0, 0.0, key2)
    assert torch.equal(out2, alone)
    torch.testing.assert_close(out2, mu2 + F.softplus(rho2) * eps2, rtol=1e-6, atol=1e-6)
    sigma = F.softplus(torch.cat([rho, rho2]).double())
    assert sums[0] == pytest.approx(sigma.log().sum().item(), rel=1e-6)
    assert sums[1] == pytest.approx((sigma**2).sum().item(), rel=1e-6)
    assert sums2[1] == pytest.approx((sigma[50:] ** 2).sum().item(), rel=1e-6)
    g, g2 = torch.randn(50, generator=gen), torch.randn(7, generator=gen)
    grads = []
    for stored in (True, False):
        gm, gr, gm2, gr2 = torch.empty(50), torch.empty(50), torch.empty(7), torch.empty(7)
        native.posterior_backward(g, mu, rho, eps if stored else None, gm, gr, 0, 0.0, 0.3, 1.0, key=key,
                                  second=(g2, mu2, rho2, eps2 if stored else None, gm2, gr2), second_key=key2)
        grads.append(torch.cat([gm, gr, gm2, gr2]))
    assert torch.equal(grads[0], grads[1])
    with pytest.raises(ValueError, match="eps or its key"):
        native.posterior_backward(g, mu, rho, None, torch.empty(50), torch.empty(50), 0, 0.0, 0.3, 1.0)


def test_workspace_hands_a_buffer_out_again_only_after_its_node_is_freed():
    ws = native.Workspace(min_numel=16)

    class Node:  # stands for an autograd ctx
        pass

    node = Node()
    held = ws.take((8, 8))
    ws.recycle_with(node, held)
    other = ws.take((8, 8))
    assert other.data_ptr() != held.data_ptr()  # still referenced by the live node
    ptr = held.data_ptr()
    del node, held
    again = ws.take((8, 8))
    assert again.data_ptr() == ptr and again.shape == (8, 8)
    ws.give_back(ws.take((2, 2)))  # below min_numel: not worth pooling
    assert (2, 2) not in ws._free


def test_nan_in_rho_propagates_to_the_sample_and_its_gradients():
    """A NaN parameter must not be hidden (softplus's exp clamps its argument: the clamp keeps NaN)."""
    mu = torch.zeros(40, requires_grad=True)
    rho = torch.full((40,), -5.0)
    rho[3], rho[30] = float("nan"), float("nan")
    rho.requires_grad_()
    for kind in native.KINDS:
        out, kl = native.gaussian_posterior(mu, rho, kind, key=(1, 2))
        assert torch.isnan(out[[3, 30]]).all() and torch.isfinite(out[:3]).all() and torch.isnan(kl), kind
        (g_rho,) = torch.autograd.grad(out.sum(), rho)
        assert torch.isnan(g_rho[[3, 30]]).all() and torch.isfinite(g_rho[:3]).all(), kind
