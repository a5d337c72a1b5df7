/* Scalar kernels for one floating-point type (see kernels.c), for any channel count: the
 * reference loops that kernels_vec.h vectorises. */

/* ReLU when `relu`; NaN stays NaN, as in PyTorch. */
static inline real FN(relu_if)(real v, int relu) { return (relu && v < (real)0) ? (real)0 : v; }

/* Depthwise convolution: y[n, oh, ow, c] = sum_taps w[c, tap] * x[n, oh*s-p+i*d, ow*s-p+j*d, c]
 * (x read through a ReLU when `relu`). `wt` is the weight transposed to [K*K, C]. */
static void FN(dw_forward_scalar)(const real *restrict x, const real *restrict wt, real *restrict y,
                           i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d, int relu)
{
    for (i64 n = 0; n < N; n++)
        for (i64 oh = 0; oh < Ho; oh++)
            for (i64 ow = 0; ow < Wo; ow++) {
                real *restrict out = y + ((n * Ho + oh) * Wo + ow) * C;
                for (i64 c = 0; c < C; c++) out[c] = 0;
                for (i64 i = 0; i < K; i++) {
                    i64 ih = oh * s - p + i * d;
                    if (ih < 0 || ih >= H) continue;
                    for (i64 j = 0; j < K; j++) {
                        i64 iw = ow * s - p + j * d;
                        if (iw < 0 || iw >= W) continue;
                        const real *restrict xi = x + ((n * H + ih) * W + iw) * C;
                        const real *restrict wk = wt + (i * K + j) * C;
                        if (relu)
                            for (i64 c = 0; c < C; c++) out[c] += wk[c] * FN(relu_if)(xi[c], 1);
                        else
                            for (i64 c = 0; c < C; c++) out[c] += wk[c] * xi[c];
                    }
                }
            }
}

/* Gradients of dw_forward in one pass over the output: gx (zeroed here; NULL: not wanted) and
 * the transposed weight gradient gwt [K*K, C] (zeroed here; NULL: not wanted). */
static void FN(dw_backward_scalar)(const real *restrict x, const real *restrict wt, const real *restrict gy,
                            real *restrict gx, real *restrict gwt,
                            i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d, int relu)
{
    if (gx) memset(gx, 0, sizeof(real) * N * H * W * C);
    if (gwt) memset(gwt, 0, sizeof(real) * K * K * C);
    for (i64 n = 0; n < N; n++)
        for (i64 oh = 0; oh < Ho; oh++)
            for (i64 ow = 0; ow < Wo; ow++) {
                const real *restrict g = gy + ((n * Ho + oh) * Wo + ow) * C;
                for (i64 i = 0; i < K; i++) {
                    i64 ih = oh * s - p + i * d;
                    if (ih < 0 || ih >= H) continue;
                    for (i64 j = 0; j < K; j++) {
                        i64 iw = ow * s - p + j * d;
                        if (iw < 0 || iw >= W) continue;
                        i64 at = ((n * H + ih) * W + iw) * C, tap = (i * K + j) * C;
                        if (gx) {
                            real *restrict gxi = gx + at;
                            const real *restrict wk = wt + tap;
                            for (i64 c = 0; c < C; c++) gxi[c] += wk[c] * g[c];
                        }
                        if (gwt) {
                            real *restrict gk = gwt + tap;
                            const real *restrict xi = x + at;
                            if (relu)
                                for (i64 c = 0; c < C; c++) gk[c] += FN(relu_if)(xi[c], 1) * g[c];
                            else
                                for (i64 c = 0; c < C; c++) gk[c] += xi[c] * g[c];
                        }
                    }
                }
            }
    if (gx && relu)
        for (i64 e = 0; e < N * H * W * C; e++) if (!(x[e] > 0)) gx[e] = 0;
}

/* 1x1 convolution over P pixels: y[p, o] = sum_i w[o, i] * x[p, i] (x through a ReLU when `relu`).
 * `wt` is the weight transposed to [Ci, Co]. */
static void FN(pw_forward_scalar)(const real *restrict x, const real *restrict wt, real *restrict y,
                           i64 P, i64 Ci, i64 Co, int relu)
{
    for (i64 q = 0; q < P; q++) {
        const real *restrict xq = x + q * Ci;
        real *restrict yq = y + q * Co;
        for (i64 o = 0; o < Co; o++) yq[o] = 0;
        for (i64 i = 0; i < Ci; i++) {
            real v = FN(relu_if)(xq[i], relu);
            const real *restrict wi = wt + i * Co;
            for (i64 o = 0; o < Co; o++) yq[o] += v * wi[o];
        }
    }
}

/* Gradients of pw_forward: gx [P, Ci] (NULL: not wanted; the ReLU mask is applied) and
 * gw [Co, Ci] (zeroed here; NULL: not wanted). */
static void FN(pw_backward_scalar)(const real *restrict x, const real *restrict w, const real *restrict gy,
                            real *restrict gx, real *restrict gw, i64 P, i64 Ci, i64 Co, int relu)
{
    if (gw) memset(gw, 0, sizeof(real) * Co * Ci);
    for (i64 q = 0; q < P; q++) {
        const real *restrict xq = x + q * Ci;
        const real *restrict gq = gy + q * Co;
        if (gx) {
            real *restrict gxq = gx + q * Ci;
            for (i64 i = 0; i < Ci; i++) gxq[i] = 0;
            for (i64 o = 0; o < Co; o++) {
                real g = gq[o];
                const real *restrict wo = w + o * Ci;
                for (i64 i = 0; i < Ci; i++) gxq[i] += g * wo[i];
            }
            if (relu)
                for (i64 i = 0; i < Ci; i++) if (!(xq[i] > 0)) gxq[i] = 0;
        }
        if (gw) {
            for (i64 o = 0; o < Co; o++) {
                real g = gq[o];
                real *restrict gwo = gw + o * Ci;
                if (relu)
                    for (i64 i = 0; i < Ci; i++) gwo[i] += g * FN(relu_if)(xq[i], 1);
                else
                    for (i64 i = 0; i < Ci; i++) gwo[i] += g * xq[i];
            }
        }
    }
}
