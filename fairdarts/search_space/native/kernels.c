/* CPU kernels of the search supernet's convolutional ops, on channels-last (NHWC) tensors.
 *
 * One candidate op of the search space is a chain "[ReLU] -> depthwise k x k conv -> 1x1 conv
 * -> BatchNorm (batch statistics, no affine)": dil_conv is one such chain, sep_conv two, and a
 * cell's preprocessing is the chain without the depthwise conv. At the search's sizes (8-64
 * channels, 4-32 px) PyTorch's CPU kernels for these layers run far below what the cores can
 * do (each call costs 100-500 us on tensors of ~65k elements, where a pass over the tensor
 * costs ~15 us). Here a whole chain is one forward call and one backward call, each a few
 * passes over contiguous rows of C channels that the compiler vectorises.
 *
 * The kernels are compiled twice (kernels_scalar.h, kernels_vec.h, kernels_chain.h, kernels_pool.h),
 * for float (suffix _f32) and double (_f64). Shapes: x [N, H, W, Ci], depthwise weight [Ci, K*K],
 * pointwise weight [Co, Ci], outputs [N, Ho, Wo, Co]; every tensor contiguous.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

/* Threads: the chain kernels split a batch into chunks of images whose partition depends on the
 * shapes alone, never on the thread count, and every reduction over chunks is added in chunk
 * order, so any number of threads gives the same bits. The count is PyTorch's (the loader
 * passes torch.get_num_threads()); built with -fopenmp, the library shares PyTorch's OpenMP
 * runtime (libgomp.so.1, loaded by torch first), so its threads are PyTorch's threads. */
static int fd_threads = 1;
void fairdarts_set_threads(int n) { fd_threads = n > 0 ? n : 1; }
int fairdarts_kernels_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
#define PARALLEL_FOR _Pragma("omp parallel for schedule(static) num_threads(fd_threads) if(fd_threads > 1)")

#define real float
#define FN(name) name##_f32
#include "kernels_scalar.h"
#include "kernels_vec.h"
#include "kernels_chain.h"
#include "kernels_pool.h"
#undef real
#undef FN

#define real double
#define FN(name) name##_f64
#include "kernels_scalar.h"
#include "kernels_vec.h"
#include "kernels_chain.h"
#include "kernels_pool.h"
#undef real
#undef FN

/* The interface version: the loader refuses a library whose version differs. */
int fairdarts_kernels_version(void) { return 5; }
