/* Vectorised kernels for one floating-point type (see kernels.c). Every loop runs over blocks
 * of VL channels held in one 32-byte vector, so they need C % VL == 0 (the scalar kernels of
 * kernels_scalar.h serve other channel counts). What makes them fast at the search's sizes:
 * - accumulators live in registers, four independent ones at a time (four output pixels, or
 *   four partial sums), so the loops are not serialised on the latency of one add chain;
 * - the depthwise convolutions run on a zero-padded copy of their input (the ReLU applied while
 *   copying), so every tap of every pixel is inside and the pixel loops test nothing;
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

/* x zero-padded by p on every side, through a ReLU when `relu`: [N, H + 2p, W + 2p, C]. */
static real *FN(padded)(const real *restrict x, i64 N, i64 H, i64 W, i64 C, i64 p, int relu)
{
    i64 Hp = H + 2 * p, Wp = W + 2 * p;
    real *out = malloc(sizeof(real) * N * Hp * Wp * C);
    for (i64 n = 0; n < N; n++)
        for (i64 h = 0; h < Hp; h++) {
            real *row = out + (n * Hp + h) * Wp * C;
            if (h < p || h >= p + H) {
                memset(row, 0, sizeof(real) * Wp * C);
                continue;
            }
            memset(row, 0, sizeof(real) * p * C);
            memset(row + (p + W) * C, 0, sizeof(real) * p * C);
            const real *src = x + (n * H + h - p) * W * C;
            real *dst = row + p * C;
            if (relu)
                for (i64 e = 0; e < W * C; e += VL) { vec v = FN(ld)(src + e); FN(st)(dst + e, FN(keep_pos)(v, v)); }
            else
                memcpy(dst, src, sizeof(real) * W * C);
        }
    return out;
}

/* Depthwise convolution of a padded input xp [N, Hp, Wp, C] in which every tap is inside:
 * y[n, oh, ow] = sum_taps wt[tap] * xp[n, oh*s + i*d, ow*s + j*d]; four output pixels at a time. */
static void FN(dw_conv_padded)(const real *restrict xp, const real *restrict wt, real *restrict y,
                               i64 N, i64 Hp, i64 Wp, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 d)
{
    i64 rowstep = d * Wp * C, colstep = d * C, px = s * C;
    for (i64 n = 0; n < N; n++)
        for (i64 oh = 0; oh < Ho; oh++) {
            const real *xrow = xp + (n * Hp + oh * s) * Wp * C;
            real *yrow = y + (n * Ho + oh) * Wo * C;
            for (i64 cb = 0; cb < C; cb += VL) {
                i64 ow = 0;
                for (; ow + 4 <= Wo; ow += 4) {
                    vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                    const real *b = xrow + ow * px + cb;
                    for (i64 i = 0; i < K; i++)
                        for (i64 j = 0; j < K; j++) {
                            vec w = FN(ld)(wt + (i * K + j) * C + cb);
                            const real *at = b + i * rowstep + j * colstep;
                            a0 += w * FN(ld)(at); a1 += w * FN(ld)(at + px);
                            a2 += w * FN(ld)(at + 2 * px); a3 += w * FN(ld)(at + 3 * px);
                        }
                    real *o = yrow + ow * C + cb;
                    FN(st)(o, a0); FN(st)(o + C, a1); FN(st)(o + 2 * C, a2); FN(st)(o + 3 * C, a3);
                }
                for (; ow < Wo; ow++) {
                    vec a0 = {0};
                    const real *b = xrow + ow * px + cb;
                    for (i64 i = 0; i < K; i++)
                        for (i64 j = 0; j < K; j++)
                            a0 += FN(ld)(wt + (i * K + j) * C + cb) * FN(ld)(b + i * rowstep + j * colstep);
                    FN(st)(yrow + ow * C + cb, a0);
                }
            }
        }
}

/* y[n, oh, ow, c] = sum_taps wt[tap, c] * x[n, oh*s - p + i*d, ow*s - p + j*d, c] (through a ReLU
 * when `relu`); wt is the weight transposed to [K*K, C]. */
static void FN(dw_forward_vec)(const real *restrict x, const real *restrict wt, real *restrict y,
                               i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d, int relu)
{
    real *xp = FN(padded)(x, N, H, W, C, p, relu);
    FN(dw_conv_padded)(xp, wt, y, N, H + 2 * p, W + 2 * p, C, Ho, Wo, K, s, d);
    free(xp);
}

/* grad_x of dw_forward, masked by x > 0 when `relu`. Stride 1: the convolution of gy (padded by
 * d*(K-1) - p) with the flipped kernel. Other strides: scattered into a padded gradient. */
static void FN(dw_grad_input_vec)(const real *restrict x, const real *restrict wt, const real *restrict gy,
                                  real *restrict gx, i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo,
                                  i64 K, i64 s, i64 p, i64 d, int relu)
{
    i64 q = d * (K - 1) - p;
    if (s == 1 && q >= 0 && Ho + 2 * q - d * (K - 1) == H) {
        real *flip = malloc(sizeof(real) * K * K * C);
        for (i64 t = 0; t < K * K; t++) memcpy(flip + t * C, wt + (K * K - 1 - t) * C, sizeof(real) * C);
        real *gp = FN(padded)(gy, N, Ho, Wo, C, q, 0);
        FN(dw_conv_padded)(gp, flip, gx, N, Ho + 2 * q, Wo + 2 * q, C, H, W, K, 1, d);
        free(gp);
        free(flip);
    } else {
        i64 Hp = H + 2 * p, Wp = W + 2 * p;
        real *gp = calloc((size_t)(N * Hp * Wp * C), sizeof(real));
        for (i64 n = 0; n < N; n++)
            for (i64 oh = 0; oh < Ho; oh++)
                for (i64 ow = 0; ow < Wo; ow++) {
                    const real *g = gy + ((n * Ho + oh) * Wo + ow) * C;
                    real *b = gp + ((n * Hp + oh * s) * Wp + ow * s) * C;
                    for (i64 i = 0; i < K; i++)
                        for (i64 j = 0; j < K; j++) {
                            real *at = b + (i * d * Wp + j * d) * C;
                            const real *w = wt + (i * K + j) * C;
                            for (i64 cb = 0; cb < C; cb += VL)
                                FN(st)(at + cb, FN(ld)(at + cb) + FN(ld)(w + cb) * FN(ld)(g + cb));
                        }
                }
        for (i64 n = 0; n < N; n++)
            for (i64 h = 0; h < H; h++)
                memcpy(gx + (n * H + h) * W * C, gp + ((n * Hp + h + p) * Wp + p) * C, sizeof(real) * W * C);
        free(gp);
    }
    if (relu)
        for (i64 e = 0; e < N * H * W * C; e += VL) FN(st)(gx + e, FN(keep_pos)(FN(ld)(gx + e), FN(ld)(x + e)));
}

/* One output row's contribution to the weight gradient of one kernel row: for every column tap
 * j, g[j] += sum_ow xa[ow*s + j*d] * ga[ow]. K is a constant where this is inlined (3, 5), so
 * the K sums (two chains each) stay in registers. */
static inline __attribute__((always_inline)) void FN(gw_row)(const real *xa, const real *ga, real *g, i64 Wo,
                                                            i64 px, i64 colstep, i64 C, const i64 K)
{
    vec e[7] = {{0}}, o[7] = {{0}};
    i64 ow = 0;
    for (; ow + 2 <= Wo; ow += 2) {
        vec g0 = FN(ld)(ga + ow * C), g1 = FN(ld)(ga + (ow + 1) * C);
        const real *x0 = xa + ow * px, *x1 = x0 + px;
        for (i64 j = 0; j < K; j++) {
            e[j] += FN(ld)(x0 + j * colstep) * g0;
            o[j] += FN(ld)(x1 + j * colstep) * g1;
        }
    }
    if (ow < Wo) {
        vec g0 = FN(ld)(ga + ow * C);
        for (i64 j = 0; j < K; j++) e[j] += FN(ld)(xa + ow * px + j * colstep) * g0;
    }
    for (i64 j = 0; j < K; j++) FN(st)(g + j * C, FN(ld)(g + j * C) + (e[j] + o[j]));
}

/* grad_w (transposed, [K*K, C]) of dw_forward, on the padded (ReLU'd) input. */
static void FN(dw_grad_weight_vec)(const real *restrict x, const real *restrict gy, real *restrict gwt,
                                   i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d,
                                   int relu)
{
    memset(gwt, 0, sizeof(real) * K * K * C);
    i64 Hp = H + 2 * p, Wp = W + 2 * p, px = s * C, colstep = d * C;
    real *xp = FN(padded)(x, N, H, W, C, p, relu);
    for (i64 n = 0; n < N; n++)
        for (i64 oh = 0; oh < Ho; oh++) {
            const real *grow = gy + (n * Ho + oh) * Wo * C;
            for (i64 i = 0; i < K; i++) {
                const real *xrow = xp + (n * Hp + oh * s + i * d) * Wp * C;
                for (i64 cb = 0; cb < C; cb += VL) {
                    real *g = gwt + i * K * C + cb;
                    if (K == 3) FN(gw_row)(xrow + cb, grow + cb, g, Wo, px, colstep, C, 3);
                    else if (K == 5) FN(gw_row)(xrow + cb, grow + cb, g, Wo, px, colstep, C, 5);
                    else
                        for (i64 j0 = 0; j0 < K; j0 += 7) {   /* any other size, seven columns at a time */
                            i64 k = K - j0 < 7 ? K - j0 : 7;
                            FN(gw_row)(xrow + cb + j0 * colstep, grow + cb, g + j0 * C, Wo, px, colstep, C, k);
                        }
                }
            }
        }
    free(xp);
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
