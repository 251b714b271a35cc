/* Fused factorised-Gaussian posterior for Bayes-by-Backprop: one pass per parameter tensor, OpenMP threads, and
   explicit SIMD through GCC's vector extensions: W = 16 lanes when built for AVX-512 (+ VAES), else W = 8
   (AVX2 + FMA + AES-NI).

   Forward, per element i of a parameter tensor (mu, rho):  sigma = softplus(rho),  eps_i ~ N(0, 1),
     kind 0: out = mu + sigma eps   (weight sample)     kind 1: out = sigma eps   (Flipout perturbation)
     kind 2: out = sigma^2          (local reparameterization; no noise)
   and the sums that make the closed-form KL to N(loc_p, s^2): sum log sigma, sum sigma^2, sum (mu - loc_p)^2.
   eps is stored for the backward pass, which recomputes sigma from rho (cheaper than storing more per element):
     grad_mu  = [kind 0] g + grad_kl (mu - loc_p) / s^2
     grad_rho = sigmoid(rho) (g d out / d sigma + grad_kl (sigma / s^2 - 1 / sigma)),  d out / d sigma = eps or 2 sigma

   The noise is counter-based: eps_i is a pure function of (i, key0, key1), so any thread can draw any block and
   the stream depends neither on the thread count nor on W. The bits come from AES rounds used as a keyed mixing
   function, in the style of ARS (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"): the
   128-bit block (j, t, 0, 0) (32-bit words) is whitened with the round key k_0 = (key0, key1, C0, C1), then goes
   through 6 aesenc rounds and one aesenclast with the keys k_r = k_0 + r (W0, W1, W2, W3) (word-wise 32-bit adds
   of Weyl constants; Random123's ARS adds two 64-bit constants instead, so this is a variant of it, not ARS
   itself): 7 rounds, two more than ARS-5, which passes TestU01's BigCrush. Elements 32 t .. 32 t + 31 use
   the 8 blocks j = 0..7 of t: pair p = 0..15 takes word p (block p / 4, word p % 4) of blocks 0..3 as h_a and of
   blocks 4..7 as h_b; element 32 t + 16 (p / 8) + (p % 8) gets r cos(phi) and element 32 t + 16 (p / 8) + 8 +
   (p % 8) gets r sin(phi) (Box-Muller), with r = sqrt(-2 log u), u = (h_a / 2^9 + 1/2) 2^-23 in (0, 1), and phi
   uniform on the circle from the 24 bits h_b / 2^8 (see gauss()). u has 23 bits, so that it is exact in float32
   (j + 1/2 with j < 2^24 is not), and |eps| <= sqrt(-2 log(2^-24)) = 5.77 (P(|z| > 5.77) = 8e-9).

   exp, log, sin and cos are inlined series with exact rational coefficients (Taylor, or atanh for log) after the
   usual range reduction; each states its truncation bound, all below float precision. The loop bodies are
   straight-line SIMD code with no calls. A partial last block runs through the same code on a padded copy. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__VAES__)
#define W 16
#define IOTA {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#else
#define W 8
#define IOTA {0, 1, 2, 3, 4, 5, 6, 7}
#endif
#define STEP (2 * W)   /* elements per loop iteration: one vector of W Box-Muller pairs */
#define ROUNDS 7       /* AES rounds of the noise */
#define CHUNK 4096     /* elements per OpenMP work item (a multiple of STEP) */
#define PAR_MIN 65536  /* elements below which one thread is faster than waking the team */

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));

static const vi iota = IOTA;

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float x) { return (vf){0} + x; }
static inline vf to_float(vi x) { return __builtin_convertvector(x, vf); }
static inline vf where(vi mask, vf yes, vf no) { return (vf)((mask & (vi)yes) | (~mask & (vi)no)); }
static inline vf vmax(vf a, vf b) { return where(a < b, b, a); } /* a NaN in a stays NaN */
static inline vf vabs(vf x) { return (vf)((vi)x & 0x7fffffff); }

#if W == 16
static inline vf vsqrt(vf x) { return _mm512_sqrt_ps(x); }
static inline int any(vi mask) { return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask) != 0; }
#else
static inline vf vsqrt(vf x) { return _mm256_sqrt_ps(x); }
static inline int any(vi mask) { return _mm256_movemask_ps((__m256)mask) != 0; }
#endif

/* ---- elementary functions ---------------------------------------------------------------------------------- */
#define LN2_HI 0.693145751953125f /* ln 2 = LN2_HI + LN2_LO, LN2_HI with 16 bits: n LN2_HI is exact for |n| < 256 */
#define LN2_LO 1.42860682030941723212e-6f

/* e^x for x <= 0: x = n ln2 + f, |f| <= ln2 / 2, e^f by Taylor to f^8 (truncation < |f|^9 / 9! < 3e-10, relative).
   x is clamped at -87 (e^-87 = 1.6e-38, just above the smallest normal float), so the result is never subnormal:
   sigma = softplus(rho) is floored at 1.6e-38 (rho < -87 acts as -87 there; its log keeps rho). */
static inline vf exp_nonpositive(vf x) {
    x = vmax(x, splat(-87.0f));
    vf t = x * 1.44269504088896341f + 12582912.0f;  /* 1.5 2^23: n = round(x / ln2) lands in the low bits */
    vf n = t - 12582912.0f;
    vi two_n = (((vi)t - 0x4b400000) + 127) << 23;  /* bits of 2^n */
    vf f = x - n * LN2_HI - n * LN2_LO;
    vf p = 1.0f / 5040 + f * (1.0f / 40320);
    p = 1.0f / 720 + f * p;
    p = 1.0f / 120 + f * p;
    p = 1.0f / 24 + f * p;
    p = 1.0f / 6 + f * p;
    p = 0.5f + f * p;
    p = 1.0f + f * p;
    p = 1.0f + f * p;
    return p * (vf)two_n;
}

/* log x for a positive normal float: x = 2^k m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
   |s| <= 0.1716, by its series to s^9 (truncation < 2 |s|^11 / 11 / (1 - s^2), i.e. < 3e-9 relative to log m). */
static inline vf vlog(vf x) {
    vi bits = (vi)x;
    vi k = ((bits >> 23) & 0xff) - 127;
    vf m = (vf)((bits & 0x7fffff) | 0x3f800000);  /* m in [1, 2) */
    vi big = m > 1.41421356237309505f;
    m = where(big, m * 0.5f, m);
    k -= big;  /* a true mask is -1: k + 1 where m was halved */
    vf s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    vf p = 1.0f / 7 + s2 * (1.0f / 9);
    p = 1.0f / 5 + s2 * p;
    p = 1.0f / 3 + s2 * p;
    p = 1.0f + s2 * p;
    vf kf = to_float(k);
    return kf * LN2_HI + (kf * LN2_LO + 2.0f * s * p);
}

/* sigma = softplus(rho) = log(1 + e^rho) and what the KL and the backward pass need from it. */
typedef struct {
    vf sigma, log_sigma, sigmoid, sigmoid_over_sigma;
} softplus_t;

/* With t = e^-|rho| in (0, 1]:  softplus(rho) = max(rho, 0) + log1p(t),  sigmoid(rho) = (rho >= 0 ? 1 : t) / (1 + t).
   Fast path, when every rho <= -4 (the usual regime: small posterior sigmas): t <= e^-4 = 0.0183 and
   log1p(t) = t y, y = 1 + w, w = -t/2 + t^2/3 - ... + t^6/7 (truncation < t^7 / 8 < 1e-13, relative), so
   sigma = t y and log sigma = rho + log(1 + w), w in [-0.0092, 0], by its series to w^5 (truncation < 2e-13).
   General path: log1p(t) = 2 atanh(u), u = t / (2 + t) <= 1/3, by its series to u^15 (truncation < 2e-9, relative),
   written t Q with Q = 2 P(u^2) / (2 + t) in (0.69, 1], so log sigma = rho + log Q for rho <= 0 with no underflow. */
static inline softplus_t softplus(vf rho) {
    softplus_t r;
    vf t = exp_nonpositive(-vabs(rho));
    vf num;  /* sigmoid's numerator */
    if (!any(rho > -4.0f)) {
        vf w = -1.0f / 6 + t * (1.0f / 7);
        w = 1.0f / 5 + t * w;
        w = -1.0f / 4 + t * w;
        w = 1.0f / 3 + t * w;
        w = -0.5f + t * w;
        w = t * w;
        r.sigma = t + t * w;
        vf l = 1.0f / 4 + w * (-1.0f / 5);
        l = -1.0f / 3 + w * l;
        l = 0.5f + w * l;
        l = -1.0f + w * l;
        r.log_sigma = rho - w * l;
        num = t;
    } else {
        vf d = 1.0f / (2.0f + t), u = t * d, u2 = u * u;
        vf p = 1.0f / 13 + u2 * (1.0f / 15);
        p = 1.0f / 11 + u2 * p;
        p = 1.0f / 9 + u2 * p;
        p = 1.0f / 7 + u2 * p;
        p = 1.0f / 5 + u2 * p;
        p = 1.0f / 3 + u2 * p;
        p = 1.0f + u2 * p;
        vf q = 2.0f * p * d;
        vi positive = rho > 0.0f;
        r.sigma = vmax(rho, splat(0.0f)) + t * q;
        r.log_sigma = vlog(where(positive, r.sigma, q)) + where(positive, splat(0.0f), rho);
        num = where(rho >= 0.0f, splat(1.0f), t);
    }
    vf inv = 1.0f / ((1.0f + t) * r.sigma);  /* one division for sigmoid / sigma and sigmoid */
    r.sigmoid_over_sigma = num * inv;
    r.sigmoid = r.sigmoid_over_sigma * r.sigma;
    return r;
}

/* ---- the noise --------------------------------------------------------------------------------------------- */
/* The noise's bits: 7 AES rounds over the counter blocks (see the header). keys[r] is k_r in every 128-bit lane. */
typedef struct {
    __m128i k[ROUNDS + 1];
} round_keys_t;

static inline round_keys_t make_round_keys(uint32_t key0, uint32_t key1) {
    round_keys_t rk;
    const __m128i weyl = _mm_setr_epi32((int)0x9e3779b9U, (int)0xbb67ae85U, (int)0x3c6ef372U, (int)0xa54ff53aU);
    rk.k[0] = _mm_setr_epi32((int)key0, (int)key1, 0x243f6a88, (int)0x85a308d3U);
    for (int r = 1; r <= ROUNDS; r++) rk.k[r] = _mm_add_epi32(rk.k[r - 1], weyl);
    return rk;
}

#if W == 16
/* h_a and h_b of the 16 pairs of block t: blocks (j, t, 0, 0), j = 0..3 and 4..7, four to a register. */
static inline void pair_bits(int64_t t, const round_keys_t *rk, vu *ha, vu *hb) {
    const __m512i j = _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0); /* word 0 of each lane */
    __m512i x = _mm512_add_epi32(_mm512_set4_epi32(0, 0, (int)t, 0), j);           /* blocks 0..3 */
    __m512i y = _mm512_add_epi32(x, _mm512_set4_epi32(0, 0, 0, 4));                /* blocks 4..7 */
    __m512i k = _mm512_broadcast_i32x4(rk->k[0]);
    x = _mm512_xor_si512(x, k);
    y = _mm512_xor_si512(y, k);
    for (int r = 1; r < ROUNDS; r++) {
        k = _mm512_broadcast_i32x4(rk->k[r]);
        x = _mm512_aesenc_epi128(x, k);
        y = _mm512_aesenc_epi128(y, k);
    }
    k = _mm512_broadcast_i32x4(rk->k[ROUNDS]);
    *ha = (vu)_mm512_aesenclast_epi128(x, k);
    *hb = (vu)_mm512_aesenclast_epi128(y, k);
}
#else
static inline __m128i ars(__m128i x, const round_keys_t *rk) {
    x = _mm_xor_si128(x, rk->k[0]);
    for (int r = 1; r < ROUNDS; r++) x = _mm_aesenc_si128(x, rk->k[r]);
    return _mm_aesenclast_si128(x, rk->k[ROUNDS]);
}

/* h_a and h_b of pairs 8 h .. 8 h + 7 of block t: blocks j = 2h, 2h + 1 and 4 + 2h, 5 + 2h. */
static inline void pair_bits_half(int64_t t, int h, const round_keys_t *rk, vu *ha, vu *hb) {
    const __m128i one = _mm_setr_epi32(1, 0, 0, 0), four = _mm_setr_epi32(4, 0, 0, 0);
    __m128i a = _mm_setr_epi32(2 * h, (int)t, 0, 0), b = _mm_add_epi32(a, four);
    __m128i a0 = ars(a, rk), a1 = ars(_mm_add_epi32(a, one), rk);
    __m128i b0 = ars(b, rk), b1 = ars(_mm_add_epi32(b, one), rk);
    *ha = (vu)_mm256_set_m128i(a1, a0);
    *hb = (vu)_mm256_set_m128i(b1, b0);
}
#endif

#define HALF_PI 1.57079632679489662f

/* The 2W standard normals of elements STEP it .. STEP it + 2W - 1, in order: lo (first W) and hi (last W).
   Radius r = sqrt(-2 log u1), u1 = (h_a / 2^9 + 1/2) 2^-23 in (0, 1); angle from the 24 bits
   h_b / 2^8 = 2^22 quadrant + f: phi = quadrant pi/2 + theta, theta = ((f + 1/2) 2^-22 - 1/2) pi/2 in [-pi/4, pi/4],
   sin and cos of theta by Taylor to theta^9 and theta^8 (truncation < 2e-9 and 3e-8), then rotated by the quadrant:
   (cos, sin) of phi = (c, s), (-s, c), (-c, -s), (s, -c) for quadrants 0..3. */
static inline void gauss(int64_t it, const round_keys_t *rk, vf *lo, vf *hi) {
    vu ha, hb;
#if W == 16
    pair_bits(it, rk, &ha, &hb);
#else
    pair_bits_half(it >> 1, (int)(it & 1), rk, &ha, &hb);
#endif
    vf u1 = (to_float((vi)(ha >> 9)) + 0.5f) * 1.1920928955078125e-07f;
    vf radius = vsqrt(-2.0f * vlog(u1));
    vu bits = hb >> 8, quadrant = bits >> 22;
    vf theta = ((to_float((vi)(bits & 0x3fffff)) + 0.5f) * 2.384185791015625e-07f - 0.5f) * HALF_PI;
    vf t2 = theta * theta;
    vf s = -1.0f / 5040 + t2 * (1.0f / 362880);
    s = 1.0f / 120 + t2 * s;
    s = -1.0f / 6 + t2 * s;
    s = theta + theta * t2 * s;
    vf k = -1.0f / 720 + t2 * (1.0f / 40320);
    k = 1.0f / 24 + t2 * k;
    k = -0.5f + t2 * k;
    k = 1.0f + t2 * k;
    vi odd = -(vi)(quadrant & 1);
    vf cos_phi = (vf)((vu)where(odd, s, k) ^ ((((quadrant + 1) >> 1) & 1) << 31));
    vf sin_phi = (vf)((vu)where(odd, k, s) ^ ((quadrant >> 1) << 31));
    vf zc = radius * cos_phi, zs = radius * sin_phi;
#if W == 16 /* zc: pairs 0-7 in lanes 0-7, pairs 8-15 in lanes 8-15: order cos 0-7, sin 0-7, cos 8-15, sin 8-15 */
    *lo = _mm512_shuffle_f32x4(zc, zs, 0x44);
    *hi = _mm512_shuffle_f32x4(zc, zs, 0xee);
#else
    *lo = zc;
    *hi = zs;
#endif
}

/* ---- the forward pass -------------------------------------------------------------------------------------- */
typedef struct {
    vf log_sigma, sigma2, centred2;
} kl_sums_t;

/* W elements: out (and eps, when kept) from mu, rho and the noise z; the KL terms into *acc, lanes >= valid excluded
   (valid = W except in the padded tail). */
static inline void forward_w(const float *mu, const float *rho, float *out, float *eps, vf z, int kind, float loc_p,
                             int valid, kl_sums_t *acc) {
    vf m = load(mu);
    softplus_t sp = softplus(load(rho));
    vf sigma = sp.sigma;
    store(out, kind == 0 ? m + sigma * z : (kind == 1 ? sigma * z : sigma * sigma));
    if (eps) store(eps, z);
    vf c = m - loc_p;
    vf ls = sp.log_sigma, s2 = sigma * sigma, c2 = c * c;
    if (valid < W) {
        vi keep = iota < valid;
        ls = where(keep, ls, splat(0.0f));
        s2 = where(keep, s2, splat(0.0f));
        c2 = where(keep, c2, splat(0.0f));
    }
    acc->log_sigma += ls;
    acc->sigma2 += s2;
    acc->centred2 += c2;
}

static inline void forward_step(int64_t it, const float *mu, const float *rho, float *out, float *eps,
                                const round_keys_t *rk, int kind, float loc_p, int valid, kl_sums_t *acc) {
    vf lo = splat(0.0f), hi = splat(0.0f);
    if (kind != 2) gauss(it, rk, &lo, &hi);
    forward_w(mu, rho, out, eps, lo, kind, loc_p, valid < W ? valid : W, acc);
    forward_w(mu + W, rho + W, out + W, eps ? eps + W : NULL, hi, kind, loc_p, valid > W ? valid - W : 0, acc);
}

static inline double hsum(vf v) {
    double s = 0;
    for (int j = 0; j < W; j++) s += v[j];
    return s;
}

/* One parameter tensor, its noise from the start of the stream of rk; adds its KL sums to sums[0..2]. */
static void forward_segment(const float *mu, const float *rho, float *out, float *eps, int64_t n,
                            const round_keys_t *rk, int kind, float loc_p, double *sums) {
    int64_t full = n / STEP;
    double dl = 0, ds = 0, dm = 0;
#pragma omp parallel for schedule(static) reduction(+ : dl, ds, dm) if (n >= PAR_MIN)
    for (int64_t chunk = 0; chunk < (full * STEP + CHUNK - 1) / CHUNK; chunk++) {
        kl_sums_t acc = {splat(0.0f), splat(0.0f), splat(0.0f)}; /* float lanes, flushed to double per chunk */
        int64_t stop = (chunk + 1) * (CHUNK / STEP) < full ? (chunk + 1) * (CHUNK / STEP) : full;
        for (int64_t it = chunk * (CHUNK / STEP); it < stop; it++) {
            int64_t i = it * STEP;
            forward_step(it, mu + i, rho + i, out + i, eps ? eps + i : NULL, rk, kind, loc_p, STEP, &acc);
        }
        dl += hsum(acc.log_sigma);
        ds += hsum(acc.sigma2);
        dm += hsum(acc.centred2);
    }
    int rem = (int)(n - STEP * full);
    if (rem) {
        float m[STEP], r[STEP], o[STEP], e[STEP];
        for (int j = 0; j < STEP; j++) { /* padding: mu = loc_p, and rho on the fast path; excluded from the sums */
            m[j] = loc_p;
            r[j] = -10.0f;
        }
        memcpy(m, mu + STEP * full, rem * sizeof(float));
        memcpy(r, rho + STEP * full, rem * sizeof(float));
        kl_sums_t acc = {splat(0.0f), splat(0.0f), splat(0.0f)};
        forward_step(full, m, r, o, e, rk, kind, loc_p, rem, &acc);
        memcpy(out + STEP * full, o, rem * sizeof(float));
        if (eps) memcpy(eps + STEP * full, e, rem * sizeof(float));
        dl += hsum(acc.log_sigma);
        ds += hsum(acc.sigma2);
        dm += hsum(acc.centred2);
    }
    sums[0] += dl;
    sums[1] += ds;
    sums[2] += dm;
}

/* The forward pass over one or two parameter tensors (a layer's weight and bias: n2 = 0 for none), each with the
   noise stream of its own key, exactly as two calls with one tensor each would draw them.
   sums[0] = sum log sigma, sums[1] = sum sigma^2, sums[2] = sum (mu - loc_p)^2 over both. eps may be NULL. */
void posterior_forward(const float *mu, const float *rho, float *out, float *eps, int64_t n, uint32_t key0,
                       uint32_t key1, const float *mu2, const float *rho2, float *out2, float *eps2, int64_t n2,
                       uint32_t key2_0, uint32_t key2_1, int kind, float loc_p, double *sums) {
    const round_keys_t rk = make_round_keys(key0, key1), rk2 = make_round_keys(key2_0, key2_1);
    sums[0] = sums[1] = sums[2] = 0.0;
    forward_segment(mu, rho, out, eps, n, &rk, kind, loc_p, sums);
    if (n2 > 0) forward_segment(mu2, rho2, out2, eps2, n2, &rk2, kind, loc_p, sums);
}

/* ---- the backward pass (see the header); grad_out may be NULL (only the KL was used) ------------------------- */
static inline void backward_w(const float *grad_out, const float *mu, const float *rho, const float *eps,
                              float *grad_mu, float *grad_rho, int kind, float loc_p, float grad_kl, float inv_var) {
    vf g = grad_out ? load(grad_out) : splat(0.0f);
    softplus_t sp = softplus(load(rho));
    vf dout = kind == 2 ? 2.0f * sp.sigma : load(eps); /* d out / d sigma */
    vf gm = (load(mu) - loc_p) * (grad_kl * inv_var);
    store(grad_mu, kind == 0 ? g + gm : gm);
    store(grad_rho, sp.sigmoid * (g * dout + grad_kl * inv_var * sp.sigma) - grad_kl * sp.sigmoid_over_sigma);
}

/* eps NULL with kind != 2: the noise is drawn again from the key, as the forward pass drew it. */
static void backward_segment(const float *grad_out, const float *mu, const float *rho, const float *eps, int64_t n,
                             const round_keys_t *rk, float *grad_mu, float *grad_rho, int kind, float loc_p,
                             float grad_kl, float inv_var) {
    const int regenerate = kind != 2 && eps == NULL;
    int64_t full = n / STEP;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t it = 0; it < full; it++) {
        int64_t i = it * STEP;
        float z[STEP];
        const float *e = eps ? eps + i : NULL;
        if (regenerate) {
            vf lo, hi;
            gauss(it, rk, &lo, &hi);
            store(z, lo);
            store(z + W, hi);
            e = z;
        }
        for (int h = 0; h < STEP; h += W)
            backward_w(grad_out ? grad_out + i + h : NULL, mu + i + h, rho + i + h, e ? e + h : NULL, grad_mu + i + h,
                       grad_rho + i + h, kind, loc_p, grad_kl, inv_var);
    }
    int rem = (int)(n - STEP * full);
    if (rem) {
        float g[STEP] = {0}, m[STEP] = {0}, r[STEP], e[STEP] = {0}, gm[STEP], gr[STEP];
        for (int j = 0; j < STEP; j++) r[j] = -10.0f; /* padding on the fast path, as in the forward pass */
        int64_t i = STEP * full;
        if (grad_out) memcpy(g, grad_out + i, rem * sizeof(float));
        if (eps) memcpy(e, eps + i, rem * sizeof(float));
        if (regenerate) {
            vf lo, hi;
            gauss(full, rk, &lo, &hi);
            store(e, lo);
            store(e + W, hi);
        }
        memcpy(m, mu + i, rem * sizeof(float));
        memcpy(r, rho + i, rem * sizeof(float));
        for (int h = 0; h < STEP; h += W)
            backward_w(g + h, m + h, r + h, e + h, gm + h, gr + h, kind, loc_p, grad_kl, inv_var);
        memcpy(grad_mu + i, gm, rem * sizeof(float));
        memcpy(grad_rho + i, gr, rem * sizeof(float));
    }
}

/* The backward pass of posterior_forward, segment by segment (grad_out2 may be NULL on its own). */
void posterior_backward(const float *grad_out, const float *mu, const float *rho, const float *eps, float *grad_mu,
                        float *grad_rho, int64_t n, uint32_t key0, uint32_t key1, const float *grad_out2,
                        const float *mu2, const float *rho2, const float *eps2, float *grad_mu2, float *grad_rho2,
                        int64_t n2, uint32_t key2_0, uint32_t key2_1, int kind, float loc_p, float grad_kl,
                        float inv_var) {
    const round_keys_t rk = make_round_keys(key0, key1), rk2 = make_round_keys(key2_0, key2_1);
    backward_segment(grad_out, mu, rho, eps, n, &rk, grad_mu, grad_rho, kind, loc_p, grad_kl, inv_var);
    if (n2 > 0)
        backward_segment(grad_out2, mu2, rho2, eps2, n2, &rk2, grad_mu2, grad_rho2, kind, loc_p, grad_kl, inv_var);
}

/* ---- the noise stream alone (for tests, and for users who want the same eps): out_i = eps_(32 block0 + i) ---- */
void standard_normal(float *out, int64_t n, uint32_t key0, uint32_t key1, int64_t block0) {
    const round_keys_t rk = make_round_keys(key0, key1);
    const int64_t it0 = block0 * (32 / STEP);
    int64_t full = n / STEP;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (int64_t it = 0; it < full; it++) {
        vf lo, hi;
        gauss(it0 + it, &rk, &lo, &hi);
        store(out + STEP * it, lo);
        store(out + STEP * it + W, hi);
    }
    int rem = (int)(n - STEP * full);
    if (rem) {
        float o[STEP];
        vf lo, hi;
        gauss(it0 + full, &rk, &lo, &hi);
        store(o, lo);
        store(o + W, hi);
        memcpy(out + STEP * full, o, rem * sizeof(float));
    }
}

/* Which build this is: the SIMD width in float lanes (8: AVX2, 16: AVX-512). */
int simd_width(void) { return W; }
