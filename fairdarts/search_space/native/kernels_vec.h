/* Vectorised kernels for one floating-point type (see kernels.c). Every loop runs over blocks
 * of VL channels held in one 32-byte vector, so they need C % VL == 0 (the scalar kernels of
 * kernels_scalar.h serve other channel counts). What makes them fast at the search's sizes:
 * - accumulators live in registers, four independent ones at a time (four output pixels, or
 *   four partial sums), so the loops are not serialised on the latency of one add chain;
 * - the depthwise convolution walks only the taps inside the image: tap ranges are computed
 *   once per call, and the pixels whose taps are all inside take a loop with no test at all;
 * - the stride-1 input gradient is the forward convolution of the output gradient with the
 *   flipped kernel (a gather, not a scatter); weight gradients are summed over a row or a tile
 *   of pixels in registers before they touch memory. */

#define VL ((i64)(32 / sizeof(real)))
typedef real FN(vec) __attribute__((vector_size(32)));
#define vec FN(vec)
#define UNROLL 4

static inline vec FN(ld)(const real *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void FN(st)(real *p, vec v) { memcpy(p, &v, sizeof v); }
static inline vec FN(bc)(real a) { return (vec){0} + a; }
/* v where `where > 0`, else 0 (a ReLU of v when where == v; a ReLU's gradient mask otherwise). */
static inline vec FN(keep_pos)(vec v, vec where)
{
    vec z = {0};
    __typeof__(where > z) mask = where > z;
    return (vec)((__typeof__(mask))v & mask);
}
static inline real FN(hsum)(vec v) { real s = 0; for (int l = 0; l < (int)VL; l++) s += v[l]; return s; }

/* The taps i in [0, K) whose input row o*s - p + i*d lies in [0, H). */
static inline void FN(tap_range)(i64 o, i64 s, i64 p, i64 d, i64 K, i64 H, i64 *lo, i64 *hi)
{
    i64 a = o * s - p;                       /* input row of tap 0 */
    i64 l = a >= 0 ? 0 : (-a + d - 1) / d;   /* first tap with a + i*d >= 0 */
    i64 last = H - 1 - a;                    /* a + i*d <= H - 1  <=>  i <= last / d */
    i64 h = last < 0 ? 0 : last / d + 1;
    *lo = l < K ? l : K;
    *hi = h < K ? h : K;
}

/* Tap ranges of every output position along one axis (no division in the pixel loops). */
static i64 *FN(tap_ranges)(i64 O, i64 s, i64 p, i64 d, i64 K, i64 H)
{
    i64 *r = malloc(sizeof(i64) * 2 * O);
    for (i64 o = 0; o < O; o++) FN(tap_range)(o, s, p, d, K, H, r + 2 * o, r + 2 * o + 1);
    return r;
}

/* One output pixel, taps [i0, i1) x [j0, j1); `base` is x at tap (0, 0) of this pixel. */
static inline vec FN(dw_pixel)(const real *base, const real *wt, i64 i0, i64 i1, i64 j0, i64 j1,
                               i64 rowstep, i64 colstep, i64 K, i64 C, int relu)
{
    vec acc = {0};
    for (i64 i = i0; i < i1; i++)
        for (i64 j = j0; j < j1; j++) {
            vec v = FN(ld)(base + i * rowstep + j * colstep);
            if (relu) v = FN(keep_pos)(v, v);
            acc += FN(ld)(wt + (i * K + j) * C) * v;
        }
    return acc;
}

/* y[n, oh, ow, c] = sum_taps wt[tap, c] * x[n, oh*s - p + i*d, ow*s - p + j*d, c] (through a ReLU
 * when `relu`); wt is the weight transposed to [K*K, C]. */
static void FN(dw_forward_vec)(const real *restrict x, const real *restrict wt, real *restrict y,
                               i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d, int relu)
{
    i64 *rh = FN(tap_ranges)(Ho, s, p, d, K, H), *rw = FN(tap_ranges)(Wo, s, p, d, K, W);
    i64 rowstep = d * W * C, colstep = d * C, px = s * C;
    for (i64 n = 0; n < N; n++)
        for (i64 oh = 0; oh < Ho; oh++) {
            i64 i0 = rh[2 * oh], i1 = rh[2 * oh + 1];
            const real *xrow = x + ((n * H + oh * s - p) * W - p) * C;   /* tap (0, 0) of ow = 0 */
            real *yrow = y + (n * Ho + oh) * Wo * C;
            for (i64 cb = 0; cb < C; cb += VL) {
                i64 ow = 0;
                while (ow < Wo) {
                    if (rw[2 * ow] == 0 && ow + UNROLL <= Wo && rw[2 * (ow + UNROLL - 1) + 1] == K) {
                        /* UNROLL pixels with every column tap inside: four chains, no tests */
                        vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                        const real *b = xrow + ow * px + cb;
                        for (i64 i = i0; i < i1; i++)
                            for (i64 j = 0; j < K; j++) {
                                vec w = FN(ld)(wt + (i * K + j) * C + cb);
                                const real *at = b + i * rowstep + j * colstep;
                                vec v0 = FN(ld)(at), v1 = FN(ld)(at + px), v2 = FN(ld)(at + 2 * px),
                                    v3 = FN(ld)(at + 3 * px);
                                if (relu) {
                                    v0 = FN(keep_pos)(v0, v0); v1 = FN(keep_pos)(v1, v1);
                                    v2 = FN(keep_pos)(v2, v2); v3 = FN(keep_pos)(v3, v3);
                                }
                                a0 += w * v0; a1 += w * v1; a2 += w * v2; a3 += w * v3;
                            }
                        real *o = yrow + ow * C + cb;
                        FN(st)(o, a0); FN(st)(o + C, a1); FN(st)(o + 2 * C, a2); FN(st)(o + 3 * C, a3);
                        ow += UNROLL;
                    } else {
                        FN(st)(yrow + ow * C + cb, FN(dw_pixel)(xrow + ow * px + cb, wt + cb, i0, i1, rw[2 * ow],
                                                               rw[2 * ow + 1], rowstep, colstep, K, C, relu));
                        ow++;
                    }
                }
            }
        }
    free(rh);
    free(rw);
}

/* For every input position along one axis, the (tap, output) pairs that read it:
 * o * s - p + t * d == position, 0 <= o < O; rows of [count, t0, o0, t1, o1, ...] (1 + 2K). */
static i64 *FN(readers)(i64 H, i64 O, i64 s, i64 p, i64 d, i64 K)
{
    i64 *r = malloc(sizeof(i64) * H * (1 + 2 * K));
    for (i64 h = 0; h < H; h++) {
        i64 *row = r + h * (1 + 2 * K), m = 0;
        for (i64 t = 0; t < K; t++) {
            i64 th = h + p - t * d;
            if (th < 0 || th % s || th / s >= O) continue;
            row[1 + 2 * m] = t;
            row[2 + 2 * m] = th / s;
            m++;
        }
        row[0] = m;
    }
    return r;
}

/* grad_x of dw_forward, masked by x > 0 when `relu`. Stride 1: the forward convolution of gy with
 * the flipped kernel and padding d*(K-1) - p. Other strides: gathered over the (tap, output)
 * pairs that read each input pixel. */
static void FN(dw_grad_input_vec)(const real *restrict x, const real *restrict wt, const real *restrict gy,
                                  real *restrict gx, i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo,
                                  i64 K, i64 s, i64 p, i64 d, int relu)
{
    if (s == 1 && d * (K - 1) - p >= 0) {
        real *flip = malloc(sizeof(real) * K * K * C);
        for (i64 t = 0; t < K * K; t++) memcpy(flip + t * C, wt + (K * K - 1 - t) * C, sizeof(real) * C);
        FN(dw_forward_vec)(gy, flip, gx, N, Ho, Wo, C, H, W, K, 1, d * (K - 1) - p, d, 0);
        free(flip);
    } else {
        i64 *rh = FN(readers)(H, Ho, s, p, d, K), *rw = FN(readers)(W, Wo, s, p, d, K), R = 1 + 2 * K;
        for (i64 n = 0; n < N; n++)
            for (i64 ih = 0; ih < H; ih++) {
                const i64 *th = rh + ih * R;
                for (i64 iw = 0; iw < W; iw++) {
                    const i64 *tw = rw + iw * R;
                    real *out = gx + ((n * H + ih) * W + iw) * C;
                    for (i64 cb = 0; cb < C; cb += VL) {
                        vec acc = {0};
                        for (i64 a = 0; a < th[0]; a++) {
                            const real *grow = gy + (n * Ho + th[2 + 2 * a]) * Wo * C + cb;
                            const real *wrow = wt + th[1 + 2 * a] * K * C + cb;
                            for (i64 b = 0; b < tw[0]; b++)
                                acc += FN(ld)(wrow + tw[1 + 2 * b] * C) * FN(ld)(grow + tw[2 + 2 * b] * C);
                        }
                        FN(st)(out + cb, acc);
                    }
                }
            }
        free(rh);
        free(rw);
    }
    if (relu)
        for (i64 e = 0; e < N * H * W * C; e += VL) FN(st)(gx + e, FN(keep_pos)(FN(ld)(gx + e), FN(ld)(x + e)));
}

/* grad_w (transposed, [K*K, C]) of dw_forward: per output row and tap, four register sums over the row. */
static void FN(dw_grad_weight_vec)(const real *restrict x, const real *restrict gy, real *restrict gwt,
                                   i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d,
                                   int relu)
{
    memset(gwt, 0, sizeof(real) * K * K * C);
    i64 *rh = FN(tap_ranges)(Ho, s, p, d, K, H), *rw = malloc(sizeof(i64) * 2 * K);
    for (i64 j = 0; j < K; j++) {   /* the outputs ow whose tap j reads inside the row */
        i64 a = j * d - p, ow0 = a >= 0 ? 0 : (-a + s - 1) / s, last = W - 1 - a;
        i64 ow1 = last < 0 ? 0 : last / s + 1;
        rw[2 * j] = ow0 < Wo ? ow0 : Wo;
        rw[2 * j + 1] = ow1 < Wo ? ow1 : Wo;
    }
    for (i64 n = 0; n < N; n++)
        for (i64 oh = 0; oh < Ho; oh++) {
            const real *grow = gy + (n * Ho + oh) * Wo * C;
            for (i64 i = rh[2 * oh]; i < rh[2 * oh + 1]; i++) {
                const real *xrow = x + (n * H + oh * s - p + i * d) * W * C;
                for (i64 j = 0; j < K; j++) {
                    i64 a = j * d - p, ow1 = rw[2 * j + 1];
                    for (i64 cb = 0; cb < C; cb += VL) {
                        vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                        i64 ow = rw[2 * j];
                        for (; ow + 4 <= ow1; ow += 4) {
                            const real *xa = xrow + (ow * s + a) * C + cb, *ga = grow + ow * C + cb;
                            vec v0 = FN(ld)(xa), v1 = FN(ld)(xa + s * C), v2 = FN(ld)(xa + 2 * s * C),
                                v3 = FN(ld)(xa + 3 * s * C);
                            if (relu) {
                                v0 = FN(keep_pos)(v0, v0); v1 = FN(keep_pos)(v1, v1);
                                v2 = FN(keep_pos)(v2, v2); v3 = FN(keep_pos)(v3, v3);
                            }
                            a0 += v0 * FN(ld)(ga); a1 += v1 * FN(ld)(ga + C);
                            a2 += v2 * FN(ld)(ga + 2 * C); a3 += v3 * FN(ld)(ga + 3 * C);
                        }
                        for (; ow < ow1; ow++) {
                            vec v0 = FN(ld)(xrow + (ow * s + a) * C + cb);
                            if (relu) v0 = FN(keep_pos)(v0, v0);
                            a0 += v0 * FN(ld)(grow + ow * C + cb);
                        }
                        real *g = gwt + (i * K + j) * C + cb;
                        FN(st)(g, FN(ld)(g) + ((a0 + a1) + (a2 + a3)));
                    }
                }
            }
        }
    free(rh);
    free(rw);
}

/* 1x1 convolution, four pixels at a time sharing each weight load; wt is [Ci, Co]. */
static void FN(pw_forward_vec)(const real *restrict x, const real *restrict wt, real *restrict y,
                               i64 P, i64 Ci, i64 Co, int relu)
{
    i64 q = 0;
    for (; q + 4 <= P; q += 4) {
        const real *x0 = x + q * Ci;
        for (i64 ob = 0; ob < Co; ob += VL) {
            vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (i64 i = 0; i < Ci; i++) {
                vec w = FN(ld)(wt + i * Co + ob);
                real v0 = x0[i], v1 = x0[Ci + i], v2 = x0[2 * Ci + i], v3 = x0[3 * Ci + i];
                if (relu) { v0 = v0 > 0 ? v0 : 0; v1 = v1 > 0 ? v1 : 0; v2 = v2 > 0 ? v2 : 0; v3 = v3 > 0 ? v3 : 0; }
                a0 += v0 * w; a1 += v1 * w; a2 += v2 * w; a3 += v3 * w;
            }
            real *y0 = y + q * Co + ob;
            FN(st)(y0, a0); FN(st)(y0 + Co, a1); FN(st)(y0 + 2 * Co, a2); FN(st)(y0 + 3 * Co, a3);
        }
    }
    for (; q < P; q++)
        for (i64 ob = 0; ob < Co; ob += VL) {
            vec a0 = {0};
            for (i64 i = 0; i < Ci; i++) {
                real v0 = x[q * Ci + i];
                if (relu) v0 = v0 > 0 ? v0 : 0;
                a0 += v0 * FN(ld)(wt + i * Co + ob);
            }
            FN(st)(y + q * Co + ob, a0);
        }
}

#define PW_TILE 128
/* Gradients of pw_forward: gx [P, Ci] (NULL: not wanted; four pixels at a time) and gw [Co, Ci]
 * (NULL: not wanted), the latter summed in registers over tiles of PW_TILE pixels. */
static void FN(pw_backward_vec)(const real *restrict x, const real *restrict w, const real *restrict gy,
                                real *restrict gx, real *restrict gw, i64 P, i64 Ci, i64 Co, int relu)
{
    if (gx) {
        i64 q = 0;
        for (; q + 4 <= P; q += 4) {
            const real *g0 = gy + q * Co;
            for (i64 ib = 0; ib < Ci; ib += VL) {
                vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                for (i64 o = 0; o < Co; o++) {
                    vec wv = FN(ld)(w + o * Ci + ib);
                    a0 += g0[o] * wv; a1 += g0[Co + o] * wv; a2 += g0[2 * Co + o] * wv; a3 += g0[3 * Co + o] * wv;
                }
                real *o0 = gx + q * Ci + ib;
                FN(st)(o0, a0); FN(st)(o0 + Ci, a1); FN(st)(o0 + 2 * Ci, a2); FN(st)(o0 + 3 * Ci, a3);
            }
        }
        for (; q < P; q++)
            for (i64 ib = 0; ib < Ci; ib += VL) {
                vec acc = {0};
                for (i64 o = 0; o < Co; o++) acc += gy[q * Co + o] * FN(ld)(w + o * Ci + ib);
                FN(st)(gx + q * Ci + ib, acc);
            }
        if (relu)
            for (i64 e = 0; e < P * Ci; e += VL) FN(st)(gx + e, FN(keep_pos)(FN(ld)(gx + e), FN(ld)(x + e)));
    }
    if (!gw) return;
    memset(gw, 0, sizeof(real) * Co * Ci);
    for (i64 q0 = 0; q0 < P; q0 += PW_TILE) {
        i64 q1 = q0 + PW_TILE < P ? q0 + PW_TILE : P;
        for (i64 o = 0; o < Co; o++)
            for (i64 ib = 0; ib < Ci; ib += VL) {
                vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                i64 q = q0;
                for (; q + 4 <= q1; q += 4) {
                    const real *xa = x + q * Ci + ib, *ga = gy + q * Co + o;
                    vec v0 = FN(ld)(xa), v1 = FN(ld)(xa + Ci), v2 = FN(ld)(xa + 2 * Ci), v3 = FN(ld)(xa + 3 * Ci);
                    if (relu) {
                        v0 = FN(keep_pos)(v0, v0); v1 = FN(keep_pos)(v1, v1);
                        v2 = FN(keep_pos)(v2, v2); v3 = FN(keep_pos)(v3, v3);
                    }
                    a0 += ga[0] * v0; a1 += ga[Co] * v1; a2 += ga[2 * Co] * v2; a3 += ga[3 * Co] * v3;
                }
                for (; q < q1; q++) {
                    vec v0 = FN(ld)(x + q * Ci + ib);
                    if (relu) v0 = FN(keep_pos)(v0, v0);
                    a0 += gy[q * Co + o] * v0;
                }
                real *g = gw + o * Ci + ib;
                FN(st)(g, FN(ld)(g) + ((a0 + a1) + (a2 + a3)));
            }
    }
}

/* Per-channel sum of a [P, C] array (with `b`: of a * b), in four register partial sums. */
static void FN(channel_sums_vec)(const real *restrict a, const real *restrict b, i64 P, i64 C, const real *shift,
                                 double *restrict out, int square)
{
    for (i64 cb = 0; cb < C; cb += VL) {
        vec m = shift ? FN(ld)(shift + cb) : (vec){0};
        vec s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        i64 q = 0;
#define TERM(k) ({ vec u = FN(ld)(a + (q + k) * C + cb) - m; square ? u * u : (b ? u * FN(ld)(b + (q + k) * C + cb) : u); })
        for (; q + 4 <= P; q += 4) { s0 += TERM(0); s1 += TERM(1); s2 += TERM(2); s3 += TERM(3); }
        for (; q < P; q++) s0 += TERM(0);
#undef TERM
        vec t = (s0 + s1) + (s2 + s3);
        for (int l = 0; l < (int)VL; l++) out[cb + l] = t[l];
    }
}

/* BatchNorm statistics: mean [C] and sq [C] = sum of (u - mean)^2 (two passes). */
static void FN(bn_stats_vec)(const real *restrict u, i64 P, i64 C, double *restrict mean, double *restrict sq)
{
    FN(channel_sums_vec)(u, NULL, P, C, NULL, mean, 0);
    real *m = calloc((size_t)C, sizeof(real));
    for (i64 c = 0; c < C; c++) { mean[c] /= (double)P; m[c] = (real)mean[c]; }
    FN(channel_sums_vec)(u, NULL, P, C, m, sq, 1);
    free(m);
}

/* u <- (u - a) * invstd, or with `g` given, out <- invstd * (g - a - in * b) (the BatchNorm
 * backward, out = gu, in = y the normalised output). */
static void FN(bn_apply_vec)(real *out, const real *in, const real *restrict g,
                             const real *restrict a, const real *restrict b, const real *restrict invstd,
                             i64 P, i64 C)
{
    for (i64 q = 0; q < P; q++)
        for (i64 cb = 0; cb < C; cb += VL) {
            vec v = FN(ld)(in + q * C + cb), k = FN(ld)(invstd + cb);
            vec r = g ? k * (FN(ld)(g + q * C + cb) - FN(ld)(a + cb) - v * FN(ld)(b + cb))
                      : (v - FN(ld)(a + cb)) * k;
            FN(st)(out + q * C + cb, r);
        }
}

static void FN(bn_backward_sums_vec)(const real *restrict y, const real *restrict g, i64 P, i64 C,
                                     double *restrict sg, double *restrict sgy)
{
    FN(channel_sums_vec)(g, NULL, P, C, NULL, sg, 0);
    FN(channel_sums_vec)(g, y, P, C, NULL, sgy, 0);
}

#undef UNROLL
#undef vec
#undef VL
