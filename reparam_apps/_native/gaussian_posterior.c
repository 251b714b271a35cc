/* Fused factorised-Gaussian posterior for Bayes-by-Backprop, AVX2 + FMA + glibc's libmvec, OpenMP.

   Per element i of a parameter tensor (mu, rho):  sigma = softplus(rho),  eps_i ~ N(0, 1),
     kind 0: out = mu + sigma eps   (weight sample)     kind 1: out = sigma eps   (Flipout perturbation)
     kind 2: out = sigma^2          (local reparameterization; no noise)
   and the sums that make the closed-form KL to N(loc_p, s^2): sum log sigma, sum sigma^2, sum (mu - loc_p)^2.

   The noise is counter-based: eps_i is a pure function of (i, key0, key1), so any thread can draw any block and
   the stream does not depend on the thread count. Elements 16b + j and 16b + 8 + j (j = 0..7) are the pair
   q = 8b + j: its two uniforms are hash(2q) and hash(2q + 1) (a 3-round "lowbias32" integer hash keyed by
   key0, key1), and Box-Muller gives r cos(t) to the first and r sin(t) to the second. The uniforms have
   24 bits like torch's CPU normal_, so |eps| <= sqrt(-2 log(2^-25)) = 5.9. The forward pass stores eps for the
   backward pass (eps is NULL for kind 2, which has no noise).
   A partial last block runs through the same vector code on a zero-padded copy: one code path for every i. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

__m256 _ZGVdN8v_logf(__m256);
__m256 _ZGVdN8v_expf(__m256);
__m256 _ZGVdN8v_log1pf(__m256);
__m256 _ZGVdN8v_sinf(__m256);
__m256 _ZGVdN8v_cosf(__m256);

#define PAR_MIN 65536 /* elements below which one thread is faster than waking the team */

static inline __m256i mix32(__m256i x) {
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb352d));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bU));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

static inline __m256i hash3(__m256i c, __m256i k0, __m256i k1) {
    __m256i h = mix32(_mm256_xor_si256(c, k0));
    h = mix32(_mm256_add_epi32(h, k1));
    return mix32(_mm256_xor_si256(h, _mm256_mullo_epi32(c, _mm256_set1_epi32((int)0x9e3779b9U))));
}

/* The 16 standard normals of block b: zc -> elements 16b + 0..7, zs -> elements 16b + 8..15. */
static inline void gauss16(int64_t b, __m256i k0, __m256i k1, __m256 *zc, __m256 *zs) {
    __m256i q = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)(8 * b)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c = _mm256_slli_epi32(q, 1);
    __m256i ha = hash3(c, k0, k1), hb = hash3(_mm256_add_epi32(c, _mm256_set1_epi32(1)), k0, k1);
    const __m256 scale = _mm256_set1_ps(5.9604644775390625e-08f); /* 2^-24 */
    __m256 u1 = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(ha, 8)), _mm256_set1_ps(0.5f)), scale);
    __m256 u2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hb, 8)), scale);
    __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), _ZGVdN8v_logf(u1)));
    /* t in [-pi, pi): the range where the vector sin/cos are most accurate */
    __m256 t = _mm256_fmsub_ps(u2, _mm256_set1_ps(6.28318530717958648f), _mm256_set1_ps(3.14159265358979324f));
    *zc = _mm256_mul_ps(r, _ZGVdN8v_cosf(t));
    *zs = _mm256_mul_ps(r, _ZGVdN8v_sinf(t));
}

/* sigma = softplus(rho) (= rho above 20, where log1p(exp(rho)) == rho in float); e_out gets exp(min(rho, 20)).
   When all 8 rho <= -4 (the usual regime: small posterior sigmas), e = exp(rho) <= 0.0184 and
   log1p(e) = e y with y = 1 - e/2 + e^2/3 - ... + e^6/7 (truncation < e^7/8 < 1e-12, relative): no log1p call.
   *y_out (if given) receives y, or 0 when the fast path was not taken. */
static inline __m256 softplus8(__m256 r, __m256 *e_out, __m256 *y_out) {
    __m256 e = _ZGVdN8v_expf(_mm256_min_ps(r, _mm256_set1_ps(20.0f)));
    if (e_out) *e_out = e;
    if (_mm256_movemask_ps(_mm256_cmp_ps(r, _mm256_set1_ps(-4.0f), _CMP_GT_OQ)) == 0) {
        __m256 y = _mm256_set1_ps(1.0f / 7.0f);
        y = _mm256_fmadd_ps(y, e, _mm256_set1_ps(-1.0f / 6.0f));
        y = _mm256_fmadd_ps(y, e, _mm256_set1_ps(1.0f / 5.0f));
        y = _mm256_fmadd_ps(y, e, _mm256_set1_ps(-1.0f / 4.0f));
        y = _mm256_fmadd_ps(y, e, _mm256_set1_ps(1.0f / 3.0f));
        y = _mm256_fmadd_ps(y, e, _mm256_set1_ps(-1.0f / 2.0f));
        y = _mm256_fmadd_ps(y, e, _mm256_set1_ps(1.0f));
        if (y_out) *y_out = y;
        return _mm256_mul_ps(e, y);
    }
    if (y_out) *y_out = _mm256_setzero_ps();
    __m256 big = _mm256_cmp_ps(r, _mm256_set1_ps(20.0f), _CMP_GT_OQ);
    return _mm256_blendv_ps(_ZGVdN8v_log1pf(e), r, big);
}

/* log sigma. Fast path (y != 0): log(e y) = rho + log(1 + t), t = y - 1 in [-0.0092, 0], by its series to t^5
   (truncation < |t|^6 / 6 < 1e-13). */
static inline __m256 log_sigma8(__m256 r, __m256 s, __m256 y) {
    if (_mm256_movemask_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_EQ_OQ)) != 0) return _ZGVdN8v_logf(s);
    __m256 t = _mm256_sub_ps(y, _mm256_set1_ps(1.0f));
    __m256 p = _mm256_set1_ps(1.0f / 5.0f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.0f / 4.0f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.0f / 3.0f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.0f / 2.0f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.0f));
    return _mm256_fmadd_ps(p, t, r);
}

static inline void fwd8(const float *mu, const float *rho, float *out, __m256 z, int kind, __m256 loc,
                        __m256 *sl, __m256 *ss, __m256 *sm) {
    __m256 m = _mm256_loadu_ps(mu), r = _mm256_loadu_ps(rho);
    __m256 y;
    __m256 s = softplus8(r, NULL, &y);
    __m256 o = kind == 0 ? _mm256_fmadd_ps(s, z, m) : (kind == 1 ? _mm256_mul_ps(s, z) : _mm256_mul_ps(s, s));
    _mm256_storeu_ps(out, o);
    *sl = _mm256_add_ps(*sl, log_sigma8(r, s, y));
    *ss = _mm256_fmadd_ps(s, s, *ss);
    __m256 c = _mm256_sub_ps(m, loc);
    *sm = _mm256_fmadd_ps(c, c, *sm);
}

static inline double hsum(__m256 v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    double s = 0;
    for (int j = 0; j < 8; j++) s += t[j];
    return s;
}

static void fwd_block(const float *mu, const float *rho, float *out, float *eps, int64_t b, __m256i k0, __m256i k1,
                      int kind, __m256 loc, __m256 *sl, __m256 *ss, __m256 *sm) {
    __m256 zc = _mm256_setzero_ps(), zs = _mm256_setzero_ps();
    if (kind != 2) gauss16(b, k0, k1, &zc, &zs);
    if (eps) {
        _mm256_storeu_ps(eps, zc);
        _mm256_storeu_ps(eps + 8, zs);
    }
    fwd8(mu, rho, out, zc, kind, loc, sl, ss, sm);
    fwd8(mu + 8, rho + 8, out + 8, zs, kind, loc, sl, ss, sm);
}

/* sums[0] = sum log sigma, sums[1] = sum sigma^2, sums[2] = sum (mu - loc_p)^2 */
void posterior_forward(const float *mu, const float *rho, float *out, float *eps, int64_t n, uint32_t key0,
                       uint32_t key1, int kind, float loc_p, double *sums) {
    const __m256i k0 = _mm256_set1_epi32((int)key0), k1 = _mm256_set1_epi32((int)key1);
    const __m256 loc = _mm256_set1_ps(loc_p);
    int64_t full = n / 16;
    double dl = 0, ds = 0, dm = 0;
#pragma omp parallel for schedule(static) reduction(+:dl, ds, dm) if (n >= PAR_MIN)
    for (int64_t chunk = 0; chunk < (full + 255) / 256; chunk++) { /* float lanes flushed to double per chunk */
        __m256 sl = _mm256_setzero_ps(), ss = _mm256_setzero_ps(), sm = _mm256_setzero_ps();
        int64_t stop = (chunk + 1) * 256 < full ? (chunk + 1) * 256 : full;
        for (int64_t b = chunk * 256; b < stop; b++)
            fwd_block(mu + 16 * b, rho + 16 * b, out + 16 * b, eps ? eps + 16 * b : NULL, b, k0, k1, kind, loc,
                      &sl, &ss, &sm);
        dl += hsum(sl); ds += hsum(ss); dm += hsum(sm);
    }
    int64_t rem = n - 16 * full;
    if (rem) { /* padded copy: padding has sigma = softplus(0), mu = loc_p; subtract its contribution */
        float m[16], r[16], o[16], e[16];
        for (int j = 0; j < 16; j++) { m[j] = loc_p; r[j] = 0.0f; }
        memcpy(m, mu + 16 * full, rem * sizeof(float));
        memcpy(r, rho + 16 * full, rem * sizeof(float));
        __m256 sl = _mm256_setzero_ps(), ss = _mm256_setzero_ps(), sm = _mm256_setzero_ps();
        fwd_block(m, r, o, e, full, k0, k1, kind, loc, &sl, &ss, &sm);
        memcpy(out + 16 * full, o, rem * sizeof(float));
        if (eps) memcpy(eps + 16 * full, e, rem * sizeof(float));
        float l[8], s2[8];
        _mm256_storeu_ps(l, _ZGVdN8v_logf(softplus8(_mm256_setzero_ps(), NULL, NULL)));
        _mm256_storeu_ps(s2, softplus8(_mm256_setzero_ps(), NULL, NULL));
        dl += hsum(sl) - (16 - rem) * (double)l[0];
        ds += hsum(ss) - (16 - rem) * (double)s2[0] * (double)s2[0];
        dm += hsum(sm);
    }
    sums[0] = dl; sums[1] = ds; sums[2] = dm;
}

/* grad_mu = [kind 0] g + (mu - loc_p) gkl / s^2
   grad_rho = sigmoid(rho) (g d out / d sigma + gkl (sigma / s^2 - 1 / sigma)),  d out / d sigma = eps or 2 sigma */
static inline void bwd8(const float *g, const float *mu, const float *rho, float *gmu, float *grho, __m256 z, int kind,
                        __m256 loc, __m256 gkl, __m256 gkl_iv, __m256 iv) {
    __m256 gv = _mm256_loadu_ps(g), m = _mm256_loadu_ps(mu), r = _mm256_loadu_ps(rho), e;
    __m256 s = softplus8(r, &e, NULL);
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 big = _mm256_cmp_ps(r, _mm256_set1_ps(20.0f), _CMP_GT_OQ);
    __m256 sig = _mm256_blendv_ps(_mm256_div_ps(e, _mm256_add_ps(one, e)), one, big);
    __m256 gs = _mm256_mul_ps(gkl, _mm256_fmsub_ps(s, iv, _mm256_div_ps(one, s)));
    __m256 dout = kind == 2 ? _mm256_add_ps(s, s) : z;
    gs = _mm256_fmadd_ps(gv, dout, gs);
    __m256 gm = _mm256_mul_ps(_mm256_sub_ps(m, loc), gkl_iv);
    if (kind == 0) gm = _mm256_add_ps(gm, gv);
    _mm256_storeu_ps(gmu, gm);
    _mm256_storeu_ps(grho, _mm256_mul_ps(gs, sig));
}

static void bwd_block(const float *g, const float *mu, const float *rho, const float *eps, float *gmu, float *grho,
                      int kind, __m256 loc, __m256 gkl, __m256 gkl_iv, __m256 iv) {
    __m256 zc = _mm256_setzero_ps(), zs = _mm256_setzero_ps();
    if (kind != 2) {
        zc = _mm256_loadu_ps(eps);
        zs = _mm256_loadu_ps(eps + 8);
    }
    bwd8(g, mu, rho, gmu, grho, zc, kind, loc, gkl, gkl_iv, iv);
    bwd8(g + 8, mu + 8, rho + 8, gmu + 8, grho + 8, zs, kind, loc, gkl, gkl_iv, iv);
}

void posterior_backward(const float *grad_out, const float *mu, const float *rho, const float *eps, float *grad_mu,
                        float *grad_rho, int64_t n, int kind, float loc_p, float grad_kl, float inv_var) {
    const __m256 loc = _mm256_set1_ps(loc_p), gkl = _mm256_set1_ps(grad_kl);
    const __m256 iv = _mm256_set1_ps(inv_var), gkl_iv = _mm256_set1_ps(grad_kl * inv_var);
    int64_t full = n / 16;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t b = 0; b < full; b++)
        bwd_block(grad_out + 16 * b, mu + 16 * b, rho + 16 * b, eps ? eps + 16 * b : NULL, grad_mu + 16 * b,
                  grad_rho + 16 * b, kind, loc, gkl, gkl_iv, iv);
    int64_t rem = n - 16 * full;
    if (rem) {
        float g[16] = {0}, m[16] = {0}, r[16] = {0}, e[16] = {0}, gm[16], gr[16];
        if (eps) memcpy(e, eps + 16 * full, rem * sizeof(float));
        memcpy(g, grad_out + 16 * full, rem * sizeof(float));
        memcpy(m, mu + 16 * full, rem * sizeof(float));
        memcpy(r, rho + 16 * full, rem * sizeof(float));
        bwd_block(g, m, r, eps ? e : NULL, gm, gr, kind, loc, gkl, gkl_iv, iv);
        memcpy(grad_mu + 16 * full, gm, rem * sizeof(float));
        memcpy(grad_rho + 16 * full, gr, rem * sizeof(float));
    }
}

/* The noise stream alone (for tests and for users who want the same eps): out_i = eps_i. */
void standard_normal(float *out, int64_t n, uint32_t key0, uint32_t key1) {
    const __m256i k0 = _mm256_set1_epi32((int)key0), k1 = _mm256_set1_epi32((int)key1);
    int64_t full = n / 16;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t b = 0; b < full; b++) {
        __m256 zc, zs;
        gauss16(b, k0, k1, &zc, &zs);
        _mm256_storeu_ps(out + 16 * b, zc);
        _mm256_storeu_ps(out + 16 * b + 8, zs);
    }
    int64_t rem = n - 16 * full;
    if (rem) {
        float o[16];
        __m256 zc, zs;
        gauss16(full, k0, k1, &zc, &zs);
        _mm256_storeu_ps(o, zc);
        _mm256_storeu_ps(o + 8, zs);
        memcpy(out + 16 * full, o, rem * sizeof(float));
    }
}
