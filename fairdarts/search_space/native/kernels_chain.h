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
 * about CHUNK_ELEMENTS input elements (at least one image), and a batch is at least MIN_CHUNKS
 * chunks (when it has as many images), so that threads have chunks to share; the partition
 * depends on the shapes only (see kernels.c: the same bits for any thread count). */
#define CHUNK_ELEMENTS 32768
#define MIN_CHUNKS 8
static inline i64 FN(chunk_images)(i64 per_image, i64 N)
{
    i64 k = CHUNK_ELEMENTS / (per_image > 0 ? per_image : 1), most = (N + MIN_CHUNKS - 1) / MIN_CHUNKS;
    if (k > most) k = most;
    return k < 1 ? 1 : (k > N ? N : k);
}

/* out [P, C] <- (in - a) * invstd, or the BatchNorm backward with g (see bn_apply_vec), chunk by
 * chunk of `rows` rows on the threads. */
static void FN(bn_apply_chunks)(real *out, const real *in, const real *g, const real *a, const real *b,
                                const real *invstd, i64 P, i64 C, i64 rows)
{
    i64 nc = (P + rows - 1) / rows;
    PARALLEL_FOR
    for (i64 ci = 0; ci < nc; ci++) {
        i64 q = ci * rows, m = P - q < rows ? P - q : rows;
        FN(bn_apply_vec)(out + q * C, in + q * C, g ? g + q * C : NULL, a, b, invstd, m, C);
    }
}

static void FN(chain_forward_vec)(const real *x, const real *wdw, const real *wpw, real *z, real *y, real *invstd,
                                  real *running_mean, real *running_var, double momentum, double eps,
                                  i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                                  int relu)
{
    i64 Pn = Ho * Wo, P = N * Pn;
    real *wt = wdw ? FN(transposed)(wdw, Ci, K * K) : NULL, *pt = FN(transposed)(wpw, Co, Ci);
    i64 nb = FN(chunk_images)(H * W * Ci, N), nc = (N + nb - 1) / nb;
    /* per chunk: its channel sums and its sums of squares about its own (rounded) mean `shift` */
    double *part = malloc(sizeof(double) * 2 * nc * Co);
    real *shift = malloc(sizeof(real) * nc * Co);
    PARALLEL_FOR
    for (i64 ci = 0; ci < nc; ci++) {
        i64 n = ci * nb, m = N - n < nb ? N - n : nb;
        const real *src = x + n * H * W * Ci;
        real *yn = y + n * Pn * Co, *sh = shift + ci * Co;
        double *sum = part + 2 * ci * Co, *sq = sum + Co;
        if (wdw) {
            FN(dw_forward_vec)(src, wt, z + n * Pn * Ci, m, H, W, Ci, Ho, Wo, K, s, p, d, relu);
            src = z + n * Pn * Ci;
        }
        FN(pw_forward_vec)(src, pt, yn, m * Pn, Ci, Co, wdw ? 0 : relu);
        FN(channel_sums_vec)(yn, m * Pn, Co, NULL, sum, 0);
        for (i64 c = 0; c < Co; c++) sh[c] = (real)(sum[c] / (double)(m * Pn));
        FN(channel_sums_vec)(yn, m * Pn, Co, sh, sq, 1);
    }
    /* batch statistics, the chunks combined in order: sum of (y - mean)^2 over chunk i is
     * sq_i - n_i (m_i - shift_i)^2, plus n_i (m_i - mean)^2 about the batch mean */
    real *mean = malloc(sizeof(real) * Co);
    for (i64 c = 0; c < Co; c++) {
        double total = 0, ss = 0;
        for (i64 ci = 0; ci < nc; ci++) total += part[2 * ci * Co + c];
        double m = total / (double)P;
        for (i64 ci = 0; ci < nc; ci++) {
            double ni = (double)((N - ci * nb < nb ? N - ci * nb : nb) * Pn);
            double mi = part[2 * ci * Co + c] / ni, di = mi - (double)shift[ci * Co + c], ei = mi - m;
            ss += part[(2 * ci + 1) * Co + c] - ni * di * di + ni * ei * ei;
        }
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
    FN(bn_apply_chunks)(y, y, NULL, mean, NULL, invstd, P, Co, nb * Pn);
    free(mean);
    free(shift);
    free(part);
    free(pt);
    free(wt);
}

static void FN(chain_backward_vec)(const real *x, const real *wdw, const real *wpw, const real *z, const real *y,
                                   const real *invstd, const real *gy, real *gx, real *gwdw, real *gwpw,
                                   i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                                   int relu, int accumulate)
{
    i64 Pn = Ho * Wo, P = N * Pn, In = H * W * Ci;
    i64 nb = FN(chunk_images)(In, N), nc = (N + nb - 1) / nb;
    /* pass 1: sum of g and of g * y per chunk, added in chunk order */
    double *sums = malloc(sizeof(double) * 2 * nc * Co);
    PARALLEL_FOR
    for (i64 ci = 0; ci < nc; ci++) {
        i64 n = ci * nb, m = N - n < nb ? N - n : nb;
        FN(bn_backward_sums_vec)(y + n * Pn * Co, gy + n * Pn * Co, m * Pn, Co, sums + 2 * ci * Co,
                                 sums + (2 * ci + 1) * Co);
    }
    real *a = malloc(sizeof(real) * 2 * Co), *b = a + Co;
    for (i64 c = 0; c < Co; c++) {
        double sg = 0, sgy = 0;
        for (i64 ci = 0; ci < nc; ci++) { sg += sums[2 * ci * Co + c]; sgy += sums[(2 * ci + 1) * Co + c]; }
        a[c] = (real)(sg / (double)P);
        b[c] = (real)(sgy / (double)P);
    }
    free(sums);
    /* pass 2: per chunk, the gradients; the weight gradients of each chunk kept apart, then
     * added in chunk order */
    real *wt = wdw ? FN(transposed)(wdw, Ci, K * K) : NULL;
    i64 npw = Co * Ci, ndw = K * K * Ci;
    real *gwpw_part = gwpw ? calloc((size_t)(nc * npw), sizeof(real)) : NULL;
    real *gwt_part = wdw && gwdw ? calloc((size_t)(nc * ndw), sizeof(real)) : NULL;
    PARALLEL_FOR
    for (i64 ci = 0; ci < nc; ci++) {
        i64 n = ci * nb, m = N - n < nb ? N - n : nb;
        const real *xn = x + n * In;
        real *gu = malloc(sizeof(real) * m * Pn * Co);
        real *gtmp = gx && accumulate ? malloc(sizeof(real) * m * In) : NULL;
        real *gxn = gx ? (gtmp ? gtmp : gx + n * In) : NULL;
        real *gw = gwpw_part ? gwpw_part + ci * npw : NULL;
        FN(bn_apply_vec)(gu, y + n * Pn * Co, gy + n * Pn * Co, a, b, invstd, m * Pn, Co);
        if (!wdw) {
            FN(pw_backward_vec)(xn, wpw, gu, gxn, gw, m * Pn, Ci, Co, relu);
        } else {
            real *gz = (gx || gwdw) ? malloc(sizeof(real) * m * Pn * Ci) : NULL;
            FN(pw_backward_vec)(z + n * Pn * Ci, wpw, gu, gz, gw, m * Pn, Ci, Co, 0);
            if (gxn) FN(dw_grad_input_vec)(xn, wt, gz, gxn, m, H, W, Ci, Ho, Wo, K, s, p, d, relu);
            if (gwt_part) FN(dw_grad_weight_vec)(xn, gz, gwt_part + ci * ndw, m, H, W, Ci, Ho, Wo, K, s, p, d, relu);
            free(gz);
        }
        if (gtmp) FN(add_into)(gx + n * In, gtmp, m * In);   /* the chunk's gradient, still in cache */
        free(gtmp);
        free(gu);
    }
    if (gwpw) {
        memcpy(gwpw, gwpw_part, sizeof(real) * npw);
        for (i64 ci = 1; ci < nc; ci++) FN(add_into)(gwpw, gwpw_part + ci * npw, npw);
    }
    if (gwt_part) {
        for (i64 ci = 1; ci < nc; ci++) FN(add_into)(gwt_part, gwt_part + ci * ndw, ndw);
        for (i64 t = 0; t < K * K; t++)
            for (i64 c = 0; c < Ci; c++) gwdw[c * K * K + t] = gwt_part[t * Ci + c];
    }
    free(gwt_part);
    free(gwpw_part);
    free(wt);
    free(a);
}

/* The chain in eval mode: BatchNorm with the running statistics (what validation runs); chunk
 * by chunk of images on the threads when the channel counts vectorise. */
static void FN(chain_forward_eval)(const real *x, const real *wdw, const real *wpw, real *z, real *y, real *invstd,
                                   const real *running_mean, const real *running_var, double eps,
                                   i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p,
                                   i64 d, int relu)
{
    i64 Pn = Ho * Wo, P = N * Pn;
    for (i64 c = 0; c < Co; c++) invstd[c] = (real)(1.0 / sqrt((double)running_var[c] + eps));
    real *wt = wdw ? FN(transposed)(wdw, Ci, K * K) : NULL, *pt = FN(transposed)(wpw, Co, Ci);
    if (VEC(Ci) && VEC(Co)) {
        i64 nb = FN(chunk_images)(H * W * Ci, N), nc = (N + nb - 1) / nb;
        PARALLEL_FOR
        for (i64 ci = 0; ci < nc; ci++) {
            i64 n = ci * nb, m = N - n < nb ? N - n : nb;
            const real *src = x + n * H * W * Ci;
            if (wdw) {
                FN(dw_forward_vec)(src, wt, z + n * Pn * Ci, m, H, W, Ci, Ho, Wo, K, s, p, d, relu);
                src = z + n * Pn * Ci;
            }
            FN(pw_forward_vec)(src, pt, y + n * Pn * Co, m * Pn, Ci, Co, wdw ? 0 : relu);
            FN(bn_apply_vec)(y + n * Pn * Co, y + n * Pn * Co, NULL, running_mean, NULL, invstd, m * Pn, Co);
        }
    } else {
        const real *src = x;
        if (wdw) {
            FN(dw_forward_scalar)(x, wt, z, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
            src = z;
        }
        FN(pw_forward_scalar)(src, pt, y, P, Ci, Co, wdw ? 0 : relu);
        for (i64 q = 0; q < P; q++)
            for (i64 c = 0; c < Co; c++) y[q * Co + c] = (y[q * Co + c] - running_mean[c]) * invstd[c];
    }
    free(pt);
    free(wt);
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
