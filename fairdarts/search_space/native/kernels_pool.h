/* 3x3 pooling with padding 1 (the search's max_pool_3x3 and avg_pool_3x3, stride 1 or 2) on
 * channels-last tensors x [N, H, W, C] -> y [N, Ho, Wo, C], images on the threads. PyTorch's CPU
 * kernels take ~10 ns per output element at the search's sizes; these loops run over the C
 * contiguous channels of a pixel, which the compiler vectorises.
 * Max: PyTorch's rule, NaN included: a tap replaces the maximum when it is greater or NaN, so the
 * gradient goes to the first maximum (the last NaN) of the window, found again in the backward.
 * Avg: the divisor counts the taps inside the image (count_include_pad=False). */

/* The window of output (oh, ow): input rows [h0, h1) and columns [w0, w1). */
#define POOL_WINDOW                                                            \
    i64 h0 = oh * s - 1, w0 = ow * s - 1, h1 = h0 + 3, w1 = w0 + 3;            \
    if (h0 < 0) h0 = 0;                                                        \
    if (w0 < 0) w0 = 0;                                                        \
    if (h1 > H) h1 = H;                                                        \
    if (w1 > W) w1 = W;

void FN(pool3x3_forward)(const real *restrict x, real *restrict y, i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo,
                         i64 s, int avg)
{
    PARALLEL_FOR
    for (i64 n = 0; n < N; n++) {
        const real *xn = x + n * H * W * C;
        for (i64 oh = 0; oh < Ho; oh++)
            for (i64 ow = 0; ow < Wo; ow++) {
                POOL_WINDOW
                real *restrict out = y + ((n * Ho + oh) * Wo + ow) * C;
                if (avg) {
                    for (i64 c = 0; c < C; c++) out[c] = 0;
                    for (i64 h = h0; h < h1; h++)
                        for (i64 w = w0; w < w1; w++) {
                            const real *restrict in = xn + (h * W + w) * C;
                            for (i64 c = 0; c < C; c++) out[c] += in[c];
                        }
                    real count = (real)((h1 - h0) * (w1 - w0));
                    for (i64 c = 0; c < C; c++) out[c] /= count;
                } else {
                    for (i64 c = 0; c < C; c++) out[c] = -INFINITY;
                    for (i64 h = h0; h < h1; h++)
                        for (i64 w = w0; w < w1; w++) {
                            const real *restrict in = xn + (h * W + w) * C;
                            for (i64 c = 0; c < C; c++) {
                                real v = in[c];
                                out[c] = (v > out[c] || v != v) ? v : out[c];
                            }
                        }
                }
            }
    }
}

/* gx [N, H, W, C] (overwritten) from gy [N, Ho, Wo, C]; max pooling reads x to find its taps. */
void FN(pool3x3_backward)(const real *restrict x, const real *restrict gy, real *restrict gx, i64 N, i64 H, i64 W,
                          i64 C, i64 Ho, i64 Wo, i64 s, int avg)
{
    PARALLEL_FOR
    for (i64 n = 0; n < N; n++) {
        const real *xn = x + n * H * W * C;
        real *gxn = gx + n * H * W * C;
        memset(gxn, 0, sizeof(real) * H * W * C);
        i64 *best = avg ? NULL : malloc(sizeof(i64) * C);
        real *m = avg ? NULL : malloc(sizeof(real) * C);
        for (i64 oh = 0; oh < Ho; oh++)
            for (i64 ow = 0; ow < Wo; ow++) {
                POOL_WINDOW
                const real *restrict g = gy + ((n * Ho + oh) * Wo + ow) * C;
                if (avg) {
                    real count = (real)((h1 - h0) * (w1 - w0));
                    for (i64 h = h0; h < h1; h++)
                        for (i64 w = w0; w < w1; w++) {
                            real *restrict d = gxn + (h * W + w) * C;
                            for (i64 c = 0; c < C; c++) d[c] += g[c] / count;
                        }
                    continue;
                }
                for (i64 c = 0; c < C; c++) { m[c] = -INFINITY; best[c] = h0 * W + w0; }
                for (i64 h = h0; h < h1; h++)
                    for (i64 w = w0; w < w1; w++) {
                        const real *restrict in = xn + (h * W + w) * C;
                        for (i64 c = 0; c < C; c++) {
                            real v = in[c];
                            int take = v > m[c] || v != v;
                            m[c] = take ? v : m[c];
                            best[c] = take ? h * W + w : best[c];
                        }
                    }
                for (i64 c = 0; c < C; c++) gxn[best[c] * C + c] += g[c];
            }
        free(m);
        free(best);
    }
}

#undef POOL_WINDOW
