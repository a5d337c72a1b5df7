/* BatchNorm and the chain entry points for one floating-point type (see kernels.c). A chain whose
 * channel counts in and out are multiples of the vector width runs the vectorised kernels one
 * image at a time; any other runs the scalar kernels over the whole batch. */

#define VEC(C) ((C) % (i64)(32 / sizeof(real)) == 0)

/* BatchNorm on batch statistics, in place over u [P, C]: u <- (u - mean) * invstd. Saves
 * invstd [C]; moves the running statistics (unbiased variance) with `momentum` when given. */
static void FN(bn_forward)(real *restrict u, real *restrict invstd, real *restrict running_mean,
                           real *restrict running_var, double momentum, double eps, i64 P, i64 C)
{
    double *sum = calloc((size_t)(2 * C), sizeof(double)), *sq = sum + C;
    if (VEC(C)) {
        FN(bn_stats_vec)(u, P, C, sum, sq);
    } else {
        for (i64 q = 0; q < P; q++)
            for (i64 c = 0; c < C; c++) sum[c] += u[q * C + c];
        for (i64 c = 0; c < C; c++) sum[c] /= (double)P;
        for (i64 q = 0; q < P; q++)
            for (i64 c = 0; c < C; c++) { double e = u[q * C + c] - sum[c]; sq[c] += e * e; }
    }
    real *mean = malloc(sizeof(real) * C);
    for (i64 c = 0; c < C; c++) {
        double var = sq[c] / (double)P;
        invstd[c] = (real)(1.0 / sqrt(var + eps));
        mean[c] = (real)sum[c];
        if (running_mean) {
            running_mean[c] = (real)((1.0 - momentum) * running_mean[c] + momentum * sum[c]);
            double unbiased = P > 1 ? sq[c] / (double)(P - 1) : var;
            running_var[c] = (real)((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
    }
    if (VEC(C))
        FN(bn_apply_vec)(u, u, NULL, mean, NULL, invstd, P, C);
    else
        for (i64 q = 0; q < P; q++)
            for (i64 c = 0; c < C; c++) u[q * C + c] = (u[q * C + c] - mean[c]) * invstd[c];
    free(mean);
    free(sum);
}

/* Gradient of bn_forward from its output y: gu = invstd * (g - mean(g) - y * mean(g * y)). */
static void FN(bn_backward)(const real *restrict y, const real *restrict g, const real *restrict invstd,
                            real *restrict gu, i64 P, i64 C)
{
    double *sg = calloc((size_t)(2 * C), sizeof(double)), *sgy = sg + C;
    if (VEC(C))
        FN(bn_backward_sums_vec)(y, g, P, C, sg, sgy);
    else
        for (i64 q = 0; q < P; q++)
            for (i64 c = 0; c < C; c++) { sg[c] += g[q * C + c]; sgy[c] += (double)g[q * C + c] * y[q * C + c]; }
    real *a = malloc(sizeof(real) * 2 * C), *b = a + C;
    for (i64 c = 0; c < C; c++) { a[c] = (real)(sg[c] / (double)P); b[c] = (real)(sgy[c] / (double)P); }
    if (VEC(C))
        FN(bn_apply_vec)(gu, y, g, a, b, invstd, P, C);
    else
        for (i64 q = 0; q < P; q++)
            for (i64 c = 0; c < C; c++) gu[q * C + c] = invstd[c] * (g[q * C + c] - a[c] - y[q * C + c] * b[c]);
    free(a);
    free(sg);
}

static real *FN(transposed)(const real *w, i64 rows, i64 cols)
{
    real *t = malloc(sizeof(real) * rows * cols);
    for (i64 r = 0; r < rows; r++)
        for (i64 c = 0; c < cols; c++) t[c * rows + r] = w[r * cols + c];
    return t;
}

/* The chain over one batch, a few images at a time (the vectorised path): each chunk's padded
 * input, depthwise output, 1x1 output and their gradients are made and used while they are in
 * the core's cache, so memory sees each tensor of the chain about once per pass. A chunk holds
 * about CHUNK_ELEMENTS input elements (at least one image). */
#define CHUNK_ELEMENTS 32768
static inline i64 FN(chunk_images)(i64 per_image, i64 N)
{
    i64 k = CHUNK_ELEMENTS / (per_image > 0 ? per_image : 1);
    return k < 1 ? 1 : (k > N ? N : k);
}

static void FN(chain_forward_vec)(const real *x, const real *wdw, const real *wpw, real *z, real *y, real *invstd,
                                  real *running_mean, real *running_var, double momentum, double eps,
                                  i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                                  int relu)
{
    i64 Pn = Ho * Wo, P = N * Pn;
    real *wt = wdw ? FN(transposed)(wdw, Ci, K * K) : NULL, *pt = FN(transposed)(wpw, Co, Ci);
    double *sum = calloc((size_t)(4 * Co), sizeof(double)), *sq = sum + Co, *part = sq + Co, *part2 = part + Co;
    real *shift = malloc(sizeof(real) * Co);
    i64 nb = FN(chunk_images)(H * W * Ci, N);
    for (i64 n = 0; n < N; n += nb) {
        i64 m = N - n < nb ? N - n : nb;
        const real *src = x + n * H * W * Ci;
        real *yn = y + n * Pn * Co;
        if (wdw) {
            FN(dw_forward_vec)(src, wt, z + n * Pn * Ci, m, H, W, Ci, Ho, Wo, K, s, p, d, relu);
            src = z + n * Pn * Ci;
        }
        FN(pw_forward_vec)(src, pt, yn, m * Pn, Ci, Co, wdw ? 0 : relu);
        /* batch statistics: sums per chunk in registers, then in double; the squares are taken
         * about the first chunk's mean, so their difference to the mean's square does not cancel */
        FN(channel_sums_vec)(yn, m * Pn, Co, NULL, part, 0);
        if (n == 0)
            for (i64 c = 0; c < Co; c++) shift[c] = (real)(part[c] / (double)(m * Pn));
        FN(channel_sums_vec)(yn, m * Pn, Co, shift, part2, 1);
        for (i64 c = 0; c < Co; c++) { sum[c] += part[c]; sq[c] += part2[c]; }
    }
    real *mean = malloc(sizeof(real) * Co);
    for (i64 c = 0; c < Co; c++) {
        double m = sum[c] / (double)P, dm = m - (double)shift[c];
        double ss = sq[c] - (double)P * dm * dm;          /* sum of (y - mean)^2 */
        if (ss < 0) ss = 0;
        double var = ss / (double)P;
        invstd[c] = (real)(1.0 / sqrt(var + eps));
        mean[c] = (real)m;
        if (running_mean) {
            running_mean[c] = (real)((1.0 - momentum) * running_mean[c] + momentum * m);
            double unbiased = P > 1 ? ss / (double)(P - 1) : var;
            running_var[c] = (real)((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
    }
    FN(bn_apply_vec)(y, y, NULL, mean, NULL, invstd, P, Co);
    free(mean);
    free(shift);
    free(sum);
    free(pt);
    free(wt);
}

static void FN(chain_backward_vec)(const real *x, const real *wdw, const real *wpw, const real *z, const real *y,
                                   const real *invstd, const real *gy, real *gx, real *gwdw, real *gwpw,
                                   i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                                   int relu, int accumulate)
{
    i64 Pn = Ho * Wo, P = N * Pn, In = H * W * Ci;
    double *sg = calloc((size_t)(2 * Co), sizeof(double)), *sgy = sg + Co;
    FN(bn_backward_sums_vec)(y, gy, P, Co, sg, sgy);
    real *a = malloc(sizeof(real) * 2 * Co), *b = a + Co;
    for (i64 c = 0; c < Co; c++) { a[c] = (real)(sg[c] / (double)P); b[c] = (real)(sgy[c] / (double)P); }
    i64 nb = FN(chunk_images)(In, N);
    real *gu = malloc(sizeof(real) * nb * Pn * Co);
    real *gz = wdw ? malloc(sizeof(real) * nb * Pn * Ci) : NULL;
    real *wt = wdw ? FN(transposed)(wdw, Ci, K * K) : NULL;
    real *gwt = wdw && gwdw ? calloc((size_t)(K * K * Ci), sizeof(real)) : NULL;
    real *gtmp = gx && accumulate ? malloc(sizeof(real) * nb * In) : NULL;
    if (gwpw) memset(gwpw, 0, sizeof(real) * Co * Ci);
    for (i64 n = 0; n < N; n += nb) {
        i64 m = N - n < nb ? N - n : nb;
        const real *xn = x + n * In;
        real *gxn = gx ? (gtmp ? gtmp : gx + n * In) : NULL;
        FN(bn_apply_vec)(gu, y + n * Pn * Co, gy + n * Pn * Co, a, b, invstd, m * Pn, Co);
        if (!wdw) {
            FN(pw_backward_vec)(xn, wpw, gu, gxn, gwpw, m * Pn, Ci, Co, relu);
        } else {
            FN(pw_backward_vec)(z + n * Pn * Ci, wpw, gu, (gx || gwdw) ? gz : NULL, gwpw, m * Pn, Ci, Co, 0);
            if (gxn) FN(dw_grad_input_vec)(xn, wt, gz, gxn, m, H, W, Ci, Ho, Wo, K, s, p, d, relu);
            if (gwt) FN(dw_grad_weight_vec)(xn, gz, gwt, m, H, W, Ci, Ho, Wo, K, s, p, d, relu);
        }
        if (gtmp) FN(add_into)(gx + n * In, gtmp, m * In);   /* the chunk's gradient, still in cache */
    }
    free(gtmp);
    if (gwt)
        for (i64 t = 0; t < K * K; t++)
            for (i64 c = 0; c < Ci; c++) gwdw[c * K * K + t] = gwt[t * Ci + c];
    free(gwt);
    free(wt);
    free(gz);
    free(gu);
    free(a);
    free(sg);
}

/* The chain in eval mode: BatchNorm with the running statistics (what validation runs). */
static void FN(chain_forward_eval)(const real *x, const real *wdw, const real *wpw, real *z, real *y, real *invstd,
                                   const real *running_mean, const real *running_var, double eps,
                                   i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p,
                                   i64 d, int relu)
{
    i64 P = N * Ho * Wo;
    const real *src = x;
    if (wdw) {
        real *wt = FN(transposed)(wdw, Ci, K * K);
        if (VEC(Ci)) FN(dw_forward_vec)(x, wt, z, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
        else FN(dw_forward_scalar)(x, wt, z, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
        free(wt);
        src = z;
    }
    real *pt = FN(transposed)(wpw, Co, Ci);
    if (VEC(Co)) FN(pw_forward_vec)(src, pt, y, P, Ci, Co, wdw ? 0 : relu);
    else FN(pw_forward_scalar)(src, pt, y, P, Ci, Co, wdw ? 0 : relu);
    free(pt);
    for (i64 c = 0; c < Co; c++) invstd[c] = (real)(1.0 / sqrt((double)running_var[c] + eps));
    if (VEC(Co))
        FN(bn_apply_vec)(y, y, NULL, running_mean, NULL, invstd, P, Co);
    else
        for (i64 q = 0; q < P; q++)
            for (i64 c = 0; c < Co; c++) y[q * Co + c] = (y[q * Co + c] - running_mean[c]) * invstd[c];
}

/* Forward of one chain (the entry point): z = dw(x) (skipped when wdw is NULL: z = x), y = bn(pw(z)).
 * `relu` applies to x, the chain's input. z [N, Ho, Wo, Ci] is kept for the backward. Training
 * normalises with the batch statistics and moves the running ones; `use_running` (eval mode)
 * normalises with the running statistics. */
void FN(chain_forward)(const real *x, const real *wdw, const real *wpw, real *z, real *y, real *invstd,
                       real *running_mean, real *running_var, double momentum, double eps,
                       i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                       int relu, int64_t *num_batches_tracked, int use_running)
{
    if (use_running) {
        FN(chain_forward_eval)(x, wdw, wpw, z, y, invstd, running_mean, running_var, eps, N, H, W, Ci, Ho, Wo, Co,
                               K, s, p, d, relu);
        return;
    }
    if (num_batches_tracked) (*num_batches_tracked)++;
    if (VEC(Ci) && VEC(Co)) {
        FN(chain_forward_vec)(x, wdw, wpw, z, y, invstd, running_mean, running_var, momentum, eps,
                              N, H, W, Ci, Ho, Wo, Co, K, s, p, d, relu);
        return;
    }
    const real *src = x;
    int pw_relu = relu;
    if (wdw) {
        real *wt = FN(transposed)(wdw, Ci, K * K);
        FN(dw_forward_scalar)(x, wt, z, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
        free(wt);
        src = z;
        pw_relu = 0;
    }
    real *pt = FN(transposed)(wpw, Co, Ci);
    FN(pw_forward_scalar)(src, pt, y, N * Ho * Wo, Ci, Co, pw_relu);
    free(pt);
    FN(bn_forward)(y, invstd, running_mean, running_var, momentum, eps, N * Ho * Wo, Co);
}

static void FN(chain_backward_scalar)(const real *x, const real *wdw, const real *wpw, const real *z, const real *y,
                                      const real *invstd, const real *gy, real *gx, real *gwdw, real *gwpw,
                                      i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p,
                                      i64 d, int relu)
{
    i64 P = N * Ho * Wo;
    real *gu = malloc(sizeof(real) * P * Co);
    FN(bn_backward)(y, gy, invstd, gu, P, Co);
    if (!wdw) {
        FN(pw_backward_scalar)(x, wpw, gu, gx, gwpw, P, Ci, Co, relu);
        free(gu);
        return;
    }
    real *gz = (gx || gwdw) ? malloc(sizeof(real) * P * Ci) : NULL;
    FN(pw_backward_scalar)(z, wpw, gu, gz, gwpw, P, Ci, Co, 0);
    free(gu);
    if (!gz) return;
    real *wt = FN(transposed)(wdw, Ci, K * K);
    real *gwt = gwdw ? malloc(sizeof(real) * K * K * Ci) : NULL;
    FN(dw_backward_scalar)(x, wt, gz, gx, gwt, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
    if (gwt) {
        for (i64 t = 0; t < K * K; t++)
            for (i64 c = 0; c < Ci; c++) gwdw[c * K * K + t] = gwt[t * Ci + c];
        free(gwt);
    }
    free(wt);
    free(gz);
}

/* Backward of chain_forward from gscale * gy (the entry point): gx (added to it when `accumulate`),
 * gwdw [Ci, K*K], gwpw [Co, Ci]; each NULL when not wanted. The scale is the gate weight of the
 * op in a mixed edge (the BatchNorm backward is linear in gy, so it scales invstd). */
void FN(chain_backward)(const real *x, const real *wdw, const real *wpw, const real *z, const real *y,
                        const real *invstd, const real *gy, real *gx, real *gwdw, real *gwpw,
                        i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                        int relu, double gscale, int accumulate)
{
    real *scaled = NULL;
    if (gscale != 1.0) {
        scaled = malloc(sizeof(real) * Co);
        for (i64 c = 0; c < Co; c++) scaled[c] = (real)(invstd[c] * gscale);
        invstd = scaled;
    }
    if (VEC(Ci) && VEC(Co)) {
        FN(chain_backward_vec)(x, wdw, wpw, z, y, invstd, gy, gx, gwdw, gwpw, N, H, W, Ci, Ho, Wo, Co, K, s, p, d,
                               relu, accumulate);
    } else {
        real *target = gx && accumulate ? malloc(sizeof(real) * N * H * W * Ci) : gx;
        FN(chain_backward_scalar)(x, wdw, wpw, z, y, invstd, gy, target, gwdw, gwpw, N, H, W, Ci, Ho, Wo, Co, K, s,
                                  p, d, relu);
        if (target != gx) {
            FN(add_into)(gx, target, N * H * W * Ci);
            free(target);
        }
    }
    free(scaled);
}

#undef VEC
