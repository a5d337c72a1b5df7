/* Vectorised kernels for one floating-point type (see kernels.c). Every loop runs over blocks
 * of VL channels held in one 32-byte vector, so they need C % VL == 0 (the scalar kernels of
 * kernels_scalar.h serve other channel counts). What makes them fast at the search's sizes:
 * - accumulators live in registers, several independent ones at a time (output pixels, or
 *   partial sums), so the loops are not serialised on the latency of one add chain;
 * - the depthwise convolutions run on a zero-padded copy of their input (the ReLU applied while
 *   copying), so every tap of every pixel is inside and the pixel loops test nothing; at stride
 *   1 a row of eight outputs loads each input vector once for all the taps that read it;
 * - the stride-1 input gradient is the forward convolution of the output gradient with the
 *   flipped kernel (a gather, not a scatter); weight gradients are summed over a row or a tile
 *   of pixels in registers before they touch memory;
 * - every 1x1 convolution and its gradients is one register-blocked product (mk, gemm). */

#define VL ((i64)(32 / sizeof(real)))
typedef real FN(vec) __attribute__((vector_size(32)));
#define vec FN(vec)

static inline vec FN(ld)(const real *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void FN(st)(real *p, vec v) { memcpy(p, &v, sizeof v); }
/* v where `where > 0`, else 0: a ReLU's gradient mask (0 where the input is NaN, as PyTorch's). */
static inline vec FN(keep_pos)(vec v, vec where)
{
    vec z = {0};
    __typeof__(where > z) mask = where > z;
    return (vec)((__typeof__(mask))v & mask);
}

/* A ReLU that keeps NaN, as PyTorch's does (a diverged run's NaNs reach its loss and stop it). */
static inline vec FN(relu_vec)(vec v)
{
    vec z = {0};
    __typeof__(v > z) mask = ~(v <= z);
    return (vec)((__typeof__(mask))v & mask);
}

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
                for (i64 e = 0; e < W * C; e += VL) { vec v = FN(ld)(src + e); FN(st)(dst + e, FN(relu_vec)(v)); }
            else
                memcpy(dst, src, sizeof(real) * W * C);
        }
    return out;
}

/* Eight output pixels of one output row and one channel block, stride 1, kernel K with dilation
 * d (constants where this is inlined): each input vector of the window is loaded once and used
 * by every (pixel, tap) pair that reads it, and the K weights of a kernel row stay in registers. */
static inline __attribute__((always_inline)) void FN(dw_run8)(const real *b, const real *wt, real *o, i64 rowstep,
                                                             i64 C, const i64 K, const i64 d)
{
    vec acc[8] = {{0}};
    for (i64 i = 0; i < K; i++) {
        vec w[5];
        for (i64 j = 0; j < K; j++) w[j] = FN(ld)(wt + (i * K + j) * C);
        const real *row = b + i * rowstep;
#pragma GCC unroll 16
        for (i64 t = 0; t < 8 + (K - 1) * d; t++) {
            vec v = FN(ld)(row + t * C);
#pragma GCC unroll 5
            for (i64 j = 0; j < K; j++) {
                i64 k = t - j * d;
                if (k >= 0 && k < 8) acc[k] += w[j] * v;
            }
        }
    }
    for (int k = 0; k < 8; k++) FN(st)(o + k * C, acc[k]);
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
                if (s == 1 && K <= 5)
                    for (; ow + 8 <= Wo; ow += 8) {
                        const real *b = xrow + ow * C + cb;
                        real *o = yrow + ow * C + cb;
                        if (K == 3 && d == 1) FN(dw_run8)(b, wt + cb, o, rowstep, C, 3, 1);
                        else if (K == 3 && d == 2) FN(dw_run8)(b, wt + cb, o, rowstep, C, 3, 2);
                        else if (K == 5 && d == 1) FN(dw_run8)(b, wt + cb, o, rowstep, C, 5, 1);
                        else if (K == 5 && d == 2) FN(dw_run8)(b, wt + cb, o, rowstep, C, 5, 2);
                        else break;
                    }
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

/* grad_w (transposed, [K*K, C]) of dw_forward, on the padded (ReLU'd) input, added to gwt. */
static void FN(dw_grad_weight_vec)(const real *restrict x, const real *restrict gy, real *restrict gwt,
                                   i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d,
                                   int relu)
{
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

/* A register-blocked product, the building block of every 1x1 convolution and its gradients:
 * Cm[r, c] (+)= sum_k relu?(A[r*ars + k*aks]) * relu?(B[k*bks + c]) for R rows and NB vectors of
 * columns; R and NB are constants where this is inlined, so the R x NB sums stay in registers and
 * each k costs NB vector loads and R broadcasts for R * NB multiply-adds. */
static inline __attribute__((always_inline)) void FN(mk)(const real *A, i64 ars, i64 aks, const real *B, i64 bks,
                                                        i64 Kd, real *Cm, i64 crs, int acc_in, int relu_a,
                                                        int relu_b, const int R, const int NB)
{
    vec acc[4][2] = {{{0}}};
    for (i64 k = 0; k < Kd; k++) {
        vec b[2];
        for (int c = 0; c < NB; c++) {
            b[c] = FN(ld)(B + k * bks + c * VL);
            if (relu_b) b[c] = FN(relu_vec)(b[c]);
        }
        for (int r = 0; r < R; r++) {
            real a = A[r * ars + k * aks];
            if (relu_a) a = a <= 0 ? 0 : a;   /* NaN stays NaN */
            for (int c = 0; c < NB; c++) acc[r][c] += a * b[c];
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < NB; c++) {
            real *o = Cm + r * crs + c * VL;
            FN(st)(o, acc_in ? FN(ld)(o) + acc[r][c] : acc[r][c]);
        }
}

/* Cm [M, Nc] (+)= A [M, Kd] . B [Kd, Nc] with the strides above; Nc a multiple of VL. */
static void FN(gemm)(const real *A, i64 ars, i64 aks, const real *B, i64 bks, i64 Kd, real *Cm, i64 crs,
                     i64 M, i64 Nc, int acc_in, int relu_a, int relu_b)
{
    for (i64 c0 = 0; c0 < Nc; c0 += 2 * VL) {
        int two = Nc - c0 >= 2 * VL;
        i64 r0 = 0;
        for (; r0 + 4 <= M; r0 += 4) {
            const real *a = A + r0 * ars;
            real *o = Cm + r0 * crs + c0;
            if (two) FN(mk)(a, ars, aks, B + c0, bks, Kd, o, crs, acc_in, relu_a, relu_b, 4, 2);
            else FN(mk)(a, ars, aks, B + c0, bks, Kd, o, crs, acc_in, relu_a, relu_b, 4, 1);
        }
        for (; r0 < M; r0++) {
            const real *a = A + r0 * ars;
            real *o = Cm + r0 * crs + c0;
            if (two) FN(mk)(a, ars, aks, B + c0, bks, Kd, o, crs, acc_in, relu_a, relu_b, 1, 2);
            else FN(mk)(a, ars, aks, B + c0, bks, Kd, o, crs, acc_in, relu_a, relu_b, 1, 1);
        }
    }
}

/* 1x1 convolution y [P, Co] = relu?(x) [P, Ci] . wt [Ci, Co] (needs Co % VL == 0). */
static void FN(pw_forward_vec)(const real *restrict x, const real *restrict wt, real *restrict y,
                               i64 P, i64 Ci, i64 Co, int relu)
{
    FN(gemm)(x, Ci, 1, wt, Co, Ci, y, Co, P, Co, 0, relu, 0);
}

#define PW_TILE 256
/* Gradients of pw_forward (need Ci % VL == 0): gx [P, Ci] = gy . w (NULL: not wanted; masked by
 * x > 0 when `relu`) and gw [Co, Ci] += gy^T . relu?(x) (NULL: not wanted), summed over tiles
 * of PW_TILE pixels that stay in L1. */
static void FN(pw_backward_vec)(const real *restrict x, const real *restrict w, const real *restrict gy,
                                real *restrict gx, real *restrict gw, i64 P, i64 Ci, i64 Co, int relu)
{
    if (gx) {
        FN(gemm)(gy, Co, 1, w, Ci, Co, gx, Ci, P, Ci, 0, 0, 0);
        if (relu)
            for (i64 e = 0; e < P * Ci; e += VL) FN(st)(gx + e, FN(keep_pos)(FN(ld)(gx + e), FN(ld)(x + e)));
    }
    if (!gw) return;
    for (i64 q0 = 0; q0 < P; q0 += PW_TILE) {
        i64 n = q0 + PW_TILE < P ? PW_TILE : P - q0;
        FN(gemm)(gy + q0 * Co, 1, Co, x + q0 * Ci, Ci, n, gw, Ci, Co, Ci, 1, 0, relu);
    }
}

/* Per-channel sum of a [P, C] array minus `shift` [C] (NULL: 0), squared when `square`, in four
 * register partial sums. */
static void FN(channel_sums_vec)(const real *restrict a, i64 P, i64 C, const real *shift, double *restrict out,
                                 int square)
{
    for (i64 cb = 0; cb < C; cb += VL) {
        vec m = shift ? FN(ld)(shift + cb) : (vec){0};
        vec s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        i64 q = 0;
#define TERM(k) ({ vec u = FN(ld)(a + (q + k) * C + cb) - m; square ? u * u : u; })
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
    FN(channel_sums_vec)(u, P, C, NULL, mean, 0);
    real *m = calloc((size_t)C, sizeof(real));
    for (i64 c = 0; c < C; c++) { mean[c] /= (double)P; m[c] = (real)mean[c]; }
    FN(channel_sums_vec)(u, P, C, m, sq, 1);
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

/* sg [C] = sum of g, sgy [C] = sum of g * y, in one pass (two partial sums of each). */
static void FN(bn_backward_sums_vec)(const real *restrict y, const real *restrict g, i64 P, i64 C,
                                     double *restrict sg, double *restrict sgy)
{
    for (i64 cb = 0; cb < C; cb += VL) {
        vec a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        i64 q = 0;
        for (; q + 2 <= P; q += 2) {
            vec g0 = FN(ld)(g + q * C + cb), g1 = FN(ld)(g + (q + 1) * C + cb);
            a0 += g0; a1 += g1;
            b0 += g0 * FN(ld)(y + q * C + cb); b1 += g1 * FN(ld)(y + (q + 1) * C + cb);
        }
        if (q < P) {
            vec g0 = FN(ld)(g + q * C + cb);
            a0 += g0;
            b0 += g0 * FN(ld)(y + q * C + cb);
        }
        vec a = a0 + a1, b = b0 + b1;
        for (int l = 0; l < (int)VL; l++) { sg[cb + l] = a[l]; sgy[cb + l] = b[l]; }
    }
}

/* dst += src over n elements. */
static void FN(add_into)(real *restrict dst, const real *restrict src, i64 n)
{
    i64 e = 0;
    for (; e + VL <= n; e += VL) FN(st)(dst + e, FN(ld)(dst + e) + FN(ld)(src + e));
    for (; e < n; e++) dst[e] += src[e];
}

/* A mixed edge's output: out = prev + sum_k w[k] * ys[k] (prev NULL: 0), terms added in order;
 * blocks of SUM_BLOCK elements on the threads. */
#define SUM_BLOCK 8192
void FN(weighted_sum)(real *restrict out, const real *prev, const real *const *ys, const double *w, int n,
                      i64 numel)
{
    i64 nblocks = (numel + SUM_BLOCK - 1) / SUM_BLOCK;
    PARALLEL_FOR
    for (i64 bi = 0; bi < nblocks; bi++) {
        i64 e = bi * SUM_BLOCK, end = e + SUM_BLOCK < numel ? e + SUM_BLOCK : numel;
        for (; e + VL <= end; e += VL) {
            vec acc = prev ? FN(ld)(prev + e) : (vec){0};
            for (int k = 0; k < n; k++) acc += (real)w[k] * FN(ld)(ys[k] + e);
            FN(st)(out + e, acc);
        }
        for (; e < end; e++) {
            real acc = prev ? prev[e] : 0;
            for (int k = 0; k < n; k++) acc += (real)w[k] * ys[k][e];
            out[e] = acc;
        }
    }
}

/* The gate weights' gradients of a mixed edge: out[k] = sum_e g[e] * ys[k][e], k < n <= 16, in one
 * pass: partial sums per block of 4096 elements (blocks on the threads), added in double in
 * block order. */
void FN(dots)(const real *restrict g, const real *const *ys, int n, i64 numel, double *out)
{
    i64 nblocks = (numel + 4095) / 4096;
    double *part = malloc(sizeof(double) * (nblocks > 0 ? nblocks : 1) * 16);
    PARALLEL_FOR
    for (i64 bi = 0; bi < nblocks; bi++) {
        i64 b0 = bi * 4096, b1 = b0 + 4096 < numel ? b0 + 4096 : numel, e = b0;
        vec acc[16];
        memset(acc, 0, sizeof acc);
        for (; e + VL <= b1; e += VL) {
            vec gv = FN(ld)(g + e);
            for (int k = 0; k < n; k++) acc[k] += gv * FN(ld)(ys[k] + e);
        }
        for (int k = 0; k < n; k++) {
            double s = 0;
            for (int l = 0; l < (int)VL; l++) s += acc[k][l];
            for (i64 t = e; t < b1; t++) s += (double)g[t] * ys[k][t];
            part[bi * 16 + k] = s;
        }
    }
    for (int k = 0; k < n; k++) {
        out[k] = 0;
        for (i64 bi = 0; bi < nblocks; bi++) out[k] += part[bi * 16 + k];
    }
    free(part);
}

#undef vec
#undef VL
