/* BatchNorm and the chain entry points for one floating-point type (see kernels.c). Each
 * kernel takes its vectorised form when the channels it vectorises over are a multiple of the
 * vector width, its scalar form otherwise. */

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

static void FN(pw_forward)(const real *x, const real *wt, real *y, i64 P, i64 Ci, i64 Co, int relu)
{
    if (VEC(Co)) FN(pw_forward_vec)(x, wt, y, P, Ci, Co, relu);
    else FN(pw_forward_scalar)(x, wt, y, P, Ci, Co, relu);
}

static void FN(pw_backward)(const real *x, const real *w, const real *gy, real *gx, real *gw,
                            i64 P, i64 Ci, i64 Co, int relu)
{
    if (VEC(Ci)) FN(pw_backward_vec)(x, w, gy, gx, gw, P, Ci, Co, relu);
    else FN(pw_backward_scalar)(x, w, gy, gx, gw, P, Ci, Co, relu);
}

/* Forward of one chain: z = dw(x) (skipped when wdw is NULL: z = x), y = bn(pw(z)).
 * `relu` applies to x, the chain's input. z [N, Ho, Wo, Ci] is kept for the backward. */
void FN(chain_forward)(const real *x, const real *wdw, const real *wpw, real *z, real *y, real *invstd,
                       real *running_mean, real *running_var, double momentum, double eps,
                       i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                       int relu)
{
    const real *src = x;
    int pw_relu = relu;
    if (wdw) {
        real *wt = FN(transposed)(wdw, Ci, K * K);
        if (VEC(Ci)) FN(dw_forward_vec)(x, wt, z, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
        else FN(dw_forward_scalar)(x, wt, z, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
        free(wt);
        src = z;
        pw_relu = 0;
    }
    real *pt = FN(transposed)(wpw, Co, Ci);
    FN(pw_forward)(src, pt, y, N * Ho * Wo, Ci, Co, pw_relu);
    free(pt);
    FN(bn_forward)(y, invstd, running_mean, running_var, momentum, eps, N * Ho * Wo, Co);
}

static void FN(dw_backward)(const real *x, const real *wt, const real *gz, real *gx, real *gwt,
                            i64 N, i64 H, i64 W, i64 C, i64 Ho, i64 Wo, i64 K, i64 s, i64 p, i64 d, int relu)
{
    if (!VEC(C)) {
        FN(dw_backward_scalar)(x, wt, gz, gx, gwt, N, H, W, C, Ho, Wo, K, s, p, d, relu);
        return;
    }
    if (gx) FN(dw_grad_input_vec)(x, wt, gz, gx, N, H, W, C, Ho, Wo, K, s, p, d, relu);
    if (gwt) FN(dw_grad_weight_vec)(x, gz, gwt, N, H, W, C, Ho, Wo, K, s, p, d, relu);
}

/* Backward of chain_forward from gy: gx, gwdw [Ci, K*K], gwpw [Co, Ci]; each NULL when not wanted. */
void FN(chain_backward)(const real *x, const real *wdw, const real *wpw, const real *z, const real *y,
                        const real *invstd, const real *gy, real *gx, real *gwdw, real *gwpw,
                        i64 N, i64 H, i64 W, i64 Ci, i64 Ho, i64 Wo, i64 Co, i64 K, i64 s, i64 p, i64 d,
                        int relu)
{
    i64 P = N * Ho * Wo;
    real *gu = malloc(sizeof(real) * P * Co);
    FN(bn_backward)(y, gy, invstd, gu, P, Co);
    if (!wdw) {
        FN(pw_backward)(x, wpw, gu, gx, gwpw, P, Ci, Co, relu);
        free(gu);
        return;
    }
    real *gz = (gx || gwdw) ? malloc(sizeof(real) * P * Ci) : NULL;
    FN(pw_backward)(z, wpw, gu, gz, gwpw, P, Ci, Co, 0);
    free(gu);
    if (!gz) return;
    real *wt = FN(transposed)(wdw, Ci, K * K);
    real *gwt = gwdw ? malloc(sizeof(real) * K * K * Ci) : NULL;
    FN(dw_backward)(x, wt, gz, gx, gwt, N, H, W, Ci, Ho, Wo, K, s, p, d, relu);
    if (gwt) {
        for (i64 t = 0; t < K * K; t++)
            for (i64 c = 0; c < Ci; c++) gwdw[c * K * K + t] = gwt[t * Ci + c];
        free(gwt);
    }
    free(wt);
    free(gz);
}

#undef VEC
