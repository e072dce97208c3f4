/*
 * CPU kernels of rest_fair's CSR linear layers (see rest_fair/sparse/kernels.py).
 *
 * Activations are packed into panels: a (B x K) matrix A becomes P[p][k][i] = A[p*T + i][k]
 * for p < ceil(B / T), zero-padded, so that one panel row (T samples of one feature) is a
 * contiguous run of T values and one panel (K x T) fits in a core's L2 cache. The panel
 * width T is nv vectors of 64 bytes (nv = 1, 2 or 4: 16, 32 or 64 floats), chosen by the
 * caller from the batch size. The products read panel rows at the pattern's columns:
 *
 *   pack:         the panels of A, optionally gated by the output of a ReLU (its backward)
 *   csr_forward:  Y = X W^T + b, optionally ReLU
 *                 (W in CSR, panels or rows split between threads)
 *   csr_backward: GX = G W, gW = (G^T X) at the pattern
 *                 (over the CSR of W^T, columns of W split between threads)
 *
 * randperm_prefix: the first k entries of torch's CPU randperm(n) from its raw draws
 * uniform_f32:     torch's CPU uniform_ of a float32 tensor, from the same draws
 * mask_scale_f32:  a weight times its boolean mask (and a scale), in place
 * sorted_positions: searchsorted of sorted values in a sorted array, by merging
 * csr_pattern_arrays: the index arrays of a pattern and of its transpose, from flat indices
 * topk_scan_f32:   the k largest |gradient| outside the pattern, one block at a time
 *
 * Each output entry is computed by exactly one thread in a fixed order, so results do not
 * depend on the number of threads. Where the panels divide evenly among the threads, the
 * forward product and the packing without column sums give each thread whole panels (all
 * rows of them), so a thread reads the panels it packed itself; otherwise threads take
 * ranges of rows (forward) or features (packing). An output entry (sample b = q * T + i,
 * feature r) is written at out[q * sq + i * si + r * sr]: sample-major (B x N),
 * feature-major (N x B) and the panel layout itself (the next layer's input) are all such
 * strides. Threads come from OpenMP; loaded after torch, the library shares torch's OpenMP
 * runtime (same soname) and so its thread pool. Vector code uses GCC/Clang vector
 * extensions, compiled for the host (-march=native).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*part_fn)(const void *, int64_t, int64_t);

/* Run fn over [splits[t], splits[t + 1]) for t < n, on up to n OpenMP threads. */
static void run_parts(int n, const int64_t *splits, part_fn fn, const void *arg) {
#ifdef _OPENMP
    if (n > 1) {
#pragma omp parallel num_threads(n)
        {
            int team = omp_get_num_threads();
            for (int t = omp_get_thread_num(); t < n; t += team)
                fn(arg, splits[t], splits[t + 1]);
        }
        return;
    }
#endif
    for (int t = 0; t < n; ++t) fn(arg, splits[t], splits[t + 1]);
}

/* Run fn over [0, end) on up to n OpenMP threads, thread t taking the panels
   [np * t / n, np * (t + 1) / n): each thread gets a copy of arg (size bytes, at most 256)
   whose two int64 fields at byte q_at receive its range. */
static void run_panels(int n, int64_t np, int64_t end, part_fn fn, const void *arg,
                       size_t size, size_t q_at) {
#ifdef _OPENMP
#pragma omp parallel num_threads(n)
#endif
    {
#ifdef _OPENMP
        const int team = omp_get_num_threads(), first = omp_get_thread_num();
#else
        const int team = 1, first = 0;
#endif
        union { unsigned char bytes[256]; int64_t align; } local;
        for (int t = first; t < n; t += team) {
            const int64_t range[2] = {np * t / n, np * (t + 1) / n};
            memcpy(local.bytes, arg, size);
            memcpy(local.bytes + q_at, range, sizeof range);
            fn(local.bytes, 0, end);
        }
    }
}

/* 64-byte vectors: VL lanes; uvec_* may be unaligned. */
typedef float vec_f32 __attribute__((vector_size(64)));
typedef float uvec_f32 __attribute__((vector_size(64), aligned(4)));
typedef int32_t mask_f32 __attribute__((vector_size(64)));
typedef float half_f32 __attribute__((vector_size(32)));
typedef float quarter_f32 __attribute__((vector_size(16)));
typedef double vec_f64 __attribute__((vector_size(64)));
typedef double uvec_f64 __attribute__((vector_size(64), aligned(8)));
typedef int64_t mask_f64 __attribute__((vector_size(64)));
typedef double half_f64 __attribute__((vector_size(32)));
typedef double quarter_f64 __attribute__((vector_size(16)));

#ifdef __clang__
#define SHUFFLE(mask_t, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(mask_t, a, b, ...) __builtin_shuffle(a, b, (mask_t){__VA_ARGS__})
#endif

/* One stage of an in-place transpose of a VL x VL block held as VL row vectors: swap the
   h x h sub-blocks off the diagonal (element (i, j) with bit h in j and not in i trades
   places with (i + h, j - h)). All stages together transpose the block. */
#define STAGE(v, VL, h, mask_t, ...)                                                           \
    for (int i = 0; i < VL; ++i)                                                               \
        if (!(i & h)) {                                                                        \
            const __typeof__(v[0]) a = v[i], b = v[i + h];                                     \
            v[i] = SHUFFLE(mask_t, a, b, __VA_ARGS__);                                         \
            v[i + h] = SHUFFLE(mask_t, a, b, HI_##VL##_##h);                                   \
        }

#define HI_16_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define HI_16_4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define HI_16_2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define HI_16_1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#define HI_8_4 4, 5, 6, 7, 12, 13, 14, 15
#define HI_8_2 2, 3, 10, 11, 6, 7, 14, 15
#define HI_8_1 1, 9, 3, 11, 5, 13, 7, 15

static inline void transpose_f32(vec_f32 *v) {
    STAGE(v, 16, 8, mask_f32, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
    STAGE(v, 16, 4, mask_f32, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
    STAGE(v, 16, 2, mask_f32, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
    STAGE(v, 16, 1, mask_f32, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
}

static inline void transpose_f64(vec_f64 *v) {
    STAGE(v, 8, 4, mask_f64, 0, 1, 2, 3, 8, 9, 10, 11)
    STAGE(v, 8, 2, mask_f64, 0, 1, 8, 9, 4, 5, 12, 13)
    STAGE(v, 8, 1, mask_f64, 0, 8, 2, 10, 4, 12, 6, 14)
}

/* Lane l of the result: the sum of the lanes of v[l], added in the order of hsum_f32 /
   hsum_f64 below (lane k + lane k + VL/2, then those sums k + k + VL/4, then the VL/4
   of those in order), so that it equals hsum(v[l]) bitwise, for all VL vectors at once:
   each stage folds two vectors into one with two shuffles and an add. */
static inline vec_f32 hsums_f32(const vec_f32 *v) {
    vec_f32 e[8], f[4];
    for (int i = 0; i < 8; ++i) /* lanes 0-7: fold of v[2i]; 8-15: of v[2i + 1] */
        e[i] = SHUFFLE(mask_f32, v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                       19, 20, 21, 22, 23) +
               SHUFFLE(mask_f32, v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25,
                       26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; ++i) /* lane 4g + m: partial sum m of v[4i + g] */
        f[i] = SHUFFLE(mask_f32, e[2 * i], e[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18,
                       19, 24, 25, 26, 27) +
               SHUFFLE(mask_f32, e[2 * i], e[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                       22, 23, 28, 29, 30, 31);
    /* gather partial sum m of every vector into g[m] (lane l: of v[l]) */
    const vec_f32 u0 = SHUFFLE(mask_f32, f[0], f[1], 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9,
                               13, 17, 21, 25, 29),
                  u1 = SHUFFLE(mask_f32, f[0], f[1], 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11,
                               15, 19, 23, 27, 31),
                  w0 = SHUFFLE(mask_f32, f[2], f[3], 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9,
                               13, 17, 21, 25, 29),
                  w1 = SHUFFLE(mask_f32, f[2], f[3], 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11,
                               15, 19, 23, 27, 31);
    const vec_f32 g0 = SHUFFLE(mask_f32, u0, w0, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,
                               21, 22, 23),
                  g1 = SHUFFLE(mask_f32, u0, w0, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                               28, 29, 30, 31),
                  g2 = SHUFFLE(mask_f32, u1, w1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20,
                               21, 22, 23),
                  g3 = SHUFFLE(mask_f32, u1, w1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27,
                               28, 29, 30, 31);
    return ((g0 + g1) + g2) + g3;
}

static inline vec_f64 hsums_f64(const vec_f64 *v) {
    vec_f64 e[4], f[2];
    for (int i = 0; i < 4; ++i) /* lanes 0-3: fold of v[2i]; 4-7: of v[2i + 1] */
        e[i] = SHUFFLE(mask_f64, v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
               SHUFFLE(mask_f64, v[2 * i], v[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int i = 0; i < 2; ++i) /* lane 2g + m: partial sum m of v[4i + g] */
        f[i] = SHUFFLE(mask_f64, e[2 * i], e[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
               SHUFFLE(mask_f64, e[2 * i], e[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    return SHUFFLE(mask_f64, f[0], f[1], 0, 2, 4, 6, 8, 10, 12, 14) +
           SHUFFLE(mask_f64, f[0], f[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

/* dst[d] = src[index[d]] for d < count (elements of 4 or 8 bytes), on up to n threads, each
   writing one contiguous range of dst: the weight gradient, computed in the order of the
   transposed pattern, goes to the order of the values without two threads writing the same
   cache line (a scatter by thread would make every line of dst travel between the cores). */
static void gather_by_index(int n, void *dst, const void *src, const int32_t *index,
                            int64_t count, size_t size) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(n) schedule(static) if (n > 1)
#endif
    for (int64_t d = 0; d < count; ++d) {
        if (size == 4)
            ((uint32_t *)dst)[d] = ((const uint32_t *)src)[index[d]];
        else
            ((uint64_t *)dst)[d] = ((const uint64_t *)src)[index[d]];
    }
}

/* The gradient v behind a ReLU whose output is g: 0 where g <= 0, else v (also where g is
   NaN), as torch's threshold_backward(v, g, 0) computes it. */
#define GATED(g, v) ((g) <= 0 ? (__typeof__(v))0 : (v))

/* Kernels for one scalar type and one panel width (NV vectors of VL lanes). A row of the
   forward product is summed in 4 independent chains of multiply-adds (active weight j of
   the row goes to chain j mod 4 while 4 remain, the rest and the bias to chain 0; then
   chain 0 + 1 + 2 + 3), so that no lane waits on the latency of one long chain, and every
   panel width gives bitwise the same outputs. The input gradient without a weight gradient
   uses 4 / NV chains. */
#define DEFINE_WIDTH(scalar, SUFFIX, VL, NV)                                                   \
    enum { T_##SUFFIX##_##NV = NV * VL };                                                      \
                                                                                               \
    /* Write rows [r0, r1) (at most VL) of one panel, held in buf[r - r0][i], to the output    \
       entries (b0 + i, r) for i < nb; sq is already applied to out. */                        \
    static void store_##SUFFIX##_##NV(const scalar (*buf)[T_##SUFFIX##_##NV], int64_t r0,      \
                                      int64_t r1, int64_t nb, scalar *out, int64_t si,         \
                                      int64_t sr) {                                            \
        if (si == 1) {                                                                         \
            if (nb == T_##SUFFIX##_##NV) /* a whole panel row: a fixed-size copy */            \
                for (int64_t r = r0; r < r1; ++r)                                              \
                    memcpy(out + r * sr, buf[r - r0], sizeof(buf[0]));                         \
            else                                                                               \
                for (int64_t r = r0; r < r1; ++r)                                              \
                    memcpy(out + r * sr, buf[r - r0], (size_t)nb * sizeof(scalar));            \
            return;                                                                            \
        }                                                                                      \
        int64_t i0 = 0;                                                                        \
        if (sr == 1 && r1 - r0 == VL) {                                                        \
            for (; i0 + VL <= nb; i0 += VL) {                                                  \
                vec_##SUFFIX v[VL];                                                            \
                for (int r = 0; r < VL; ++r) v[r] = *(const vec_##SUFFIX *)(buf[r] + i0);      \
                transpose_##SUFFIX(v);                                                         \
                for (int i = 0; i < VL; ++i) *(uvec_##SUFFIX *)(out + (i0 + i) * si + r0) = v[i]; \
            }                                                                                  \
        }                                                                                      \
        for (int64_t i = i0; i < nb; ++i)                                                      \
            for (int64_t r = r0; r < r1; ++r) out[i * si + r * sr] = buf[r - r0][i];           \
    }                                                                                          \
                                                                                               \
    static void pack_part_##SUFFIX##_##NV(const void *p_, int64_t k0, int64_t k1) {            \
        const pack_args_##SUFFIX *p = (const pack_args_##SUFFIX *)p_;                          \
        const int64_t T = T_##SUFFIX##_##NV, B = p->batch, K = p->k, s0 = p->s0, s1 = p->s1;   \
        const int64_t sq = p->sq;                                                              \
        const scalar *gate = p->gate;                                                          \
        scalar *colsum = p->colsum;                                                            \
        if (colsum)                                                                            \
            for (int64_t k = k0; k < k1; ++k) colsum[k] = 0;                                   \
        for (int64_t q = p->q0; q < p->q1; ++q) {                                              \
            scalar *P = p->panels + q * K * T;                                                 \
            const int64_t b0 = q * T, nb = B - b0 < T ? B - b0 : T;                            \
            if (s0 == 1) { /* columns of A are contiguous: copy (or gate) them, in place when  \
                              A is these panels. The sums run over VL columns at once, each   \
                              in sample order: VL x VL blocks of the panel, transposed, add   \
                              one sample at a time. */                                         \
                for (int64_t kb = k0; kb < k1; kb += VL) {                                     \
                    const int64_t kn = k1 - kb < VL ? k1 - kb : VL;                            \
                    for (int64_t j = 0; j < kn; ++j) {                                         \
                        const int64_t k = kb + j;                                              \
                        const scalar *src = p->a + q * sq + k * s1;                            \
                        scalar *dst = P + k * T;                                               \
                        if (gate && src == dst) {                                              \
                            const scalar *g = gate + q * sq + k * s1;                          \
                            for (int64_t i = 0; i < nb; ++i) dst[i] = GATED(g[i], dst[i]);     \
                        } else if (gate) {                                                     \
                            const scalar *__restrict g = gate + q * sq + k * s1;               \
                            const scalar *__restrict x = src;                                  \
                            scalar *__restrict d = dst;                                        \
                            for (int64_t i = 0; i < nb; ++i) d[i] = GATED(g[i], x[i]);         \
                        } else if (src != dst) {                                               \
                            memcpy(dst, src, (size_t)nb * sizeof(scalar));                     \
                        }                                                                      \
                        memset(P + k * T + nb, 0, (size_t)(T - nb) * sizeof(scalar));          \
                    }                                                                          \
                    if (!colsum) continue;                                                     \
                    if (kn < VL) {                                                             \
                        for (int64_t j = 0; j < kn; ++j)                                       \
                            for (int64_t i = 0; i < nb; ++i)                                   \
                                colsum[kb + j] += P[(kb + j) * T + i];                         \
                        continue;                                                              \
                    }                                                                          \
                    vec_##SUFFIX cs = *(const uvec_##SUFFIX *)(colsum + kb);                   \
                    for (int64_t i0 = 0; i0 < nb; i0 += VL) {                                  \
                        vec_##SUFFIX v[VL];                                                    \
                        for (int r = 0; r < VL; ++r)                                           \
                            v[r] = *(const uvec_##SUFFIX *)(P + (kb + r) * T + i0);            \
                        transpose_##SUFFIX(v);                                                 \
                        const int64_t m = nb - i0 < VL ? nb - i0 : VL;                         \
                        for (int64_t i = 0; i < m; ++i) cs += v[i];                            \
                    }                                                                          \
                    *(uvec_##SUFFIX *)(colsum + kb) = cs;                                      \
                }                                                                              \
                continue;                                                                      \
            }                                                                                  \
            for (int64_t kb = k0; kb < k1; kb += VL) {                                         \
                const int64_t ke = kb + VL < k1 ? kb + VL : k1;                                \
                if (s1 == 1 && ke - kb == VL) {                                                \
                    vec_##SUFFIX cs = {0};                                                     \
                    for (int64_t i0 = 0; i0 < T; i0 += VL) {                                   \
                        vec_##SUFFIX v[VL];                                                    \
                        for (int i = 0; i < VL; ++i) {                                         \
                            if (i0 + i < nb) {                                                 \
                                const int64_t at = (b0 + i0 + i) * s0 + kb;                    \
                                v[i] = *(const uvec_##SUFFIX *)(p->a + at);                    \
                                if (gate)                                                      \
                                    v[i] = (vec_##SUFFIX)((mask_##SUFFIX)v[i] &                \
                                        ~(mask_##SUFFIX)(*(const uvec_##SUFFIX *)(gate + at) <= 0)); \
                                cs += v[i];                                                    \
                            } else {                                                           \
                                v[i] = (vec_##SUFFIX){0};                                      \
                            }                                                                  \
                        }                                                                      \
                        transpose_##SUFFIX(v);                                                 \
                        for (int j = 0; j < VL; ++j)                                           \
                            *(uvec_##SUFFIX *)(P + (kb + j) * T + i0) = v[j];                  \
                    }                                                                          \
                    if (colsum)                                                                \
                        for (int j = 0; j < VL; ++j) colsum[kb + j] += cs[j];                  \
                    continue;                                                                  \
                }                                                                              \
                for (int64_t k = kb; k < ke; ++k) {                                            \
                    scalar s = 0;                                                              \
                    for (int64_t i = 0; i < nb; ++i) {                                         \
                        const int64_t at = (b0 + i) * s0 + k * s1;                             \
                        const scalar v = gate ? GATED(gate[at], p->a[at]) : p->a[at];          \
                        P[k * T + i] = v;                                                      \
                        s += v;                                                                \
                    }                                                                          \
                    memset(P + k * T + nb, 0, (size_t)(T - nb) * sizeof(scalar));              \
                    if (colsum) colsum[k] += s;                                                \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void forward_part_##SUFFIX##_##NV(const void *p_, int64_t r0, int64_t r1) {         \
        const fwd_args_##SUFFIX *p = (const fwd_args_##SUFFIX *)p_;                            \
        const int64_t T = T_##SUFFIX##_##NV, B = p->batch;                                     \
        const int32_t *crow = p->crow, *col = p->col;                                          \
        const scalar *val = p->val;                                                            \
        scalar buf[VL][T_##SUFFIX##_##NV] __attribute__((aligned(64)));                        \
        for (int64_t q = p->q0; q < p->q1; ++q) {                                              \
            const scalar *xp = p->xp + q * p->k * T;                                           \
            const int64_t nb = B - q * T < T ? B - q * T : T;                                  \
            for (int64_t rb = r0; rb < r1; rb += VL) {                                         \
                const int64_t re = rb + VL < r1 ? rb + VL : r1;                                \
                for (int64_t r = rb; r < re; ++r) {                                            \
                    const scalar b = p->bias ? p->bias[r] : (scalar)0;                         \
                    vec_##SUFFIX a[4 * NV];                                                    \
                    for (int v = 0; v < 4 * NV; ++v) a[v] = (vec_##SUFFIX){0};                 \
                    for (int v = 0; v < NV; ++v) a[v] += b;                                    \
                    const int64_t e = crow[r + 1];                                             \
                    int64_t j = crow[r];                                                       \
                    for (; j + 4 <= e; j += 4)                                                 \
                        for (int u = 0; u < 4; ++u) {                                          \
                            const scalar w = val[j + u];                                       \
                            const uvec_##SUFFIX *x =                                           \
                                (const uvec_##SUFFIX *)(xp + (int64_t)col[j + u] * T);         \
                            for (int v = 0; v < NV; ++v) a[u * NV + v] += w * x[v];            \
                        }                                                                      \
                    for (; j < e; ++j) {                                                       \
                        const scalar w = val[j];                                               \
                        const uvec_##SUFFIX *x = (const uvec_##SUFFIX *)(xp + (int64_t)col[j] * T); \
                        for (int v = 0; v < NV; ++v) a[v] += w * x[v];                         \
                    }                                                                          \
                    for (int u = 1; u < 4; ++u)                                                \
                        for (int v = 0; v < NV; ++v) a[v] += a[u * NV + v];                    \
                    if (p->relu) /* max(a, 0), NaN kept as torch.relu keeps it */              \
                        for (int v = 0; v < NV; ++v)                                           \
                            a[v] = (vec_##SUFFIX)((mask_##SUFFIX)a[v] &                        \
                                                  ((a[v] > 0) | (a[v] != a[v])));              \
                    vec_##SUFFIX *o = (vec_##SUFFIX *)buf[r - rb];                             \
                    for (int v = 0; v < NV; ++v) o[v] = a[v];                                  \
                }                                                                              \
                store_##SUFFIX##_##NV((const scalar(*)[T_##SUFFIX##_##NV])buf, rb, re, nb,     \
                                      p->y + q * p->sq, p->si, p->sr);                         \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    static void backward_part_##SUFFIX##_##NV(const void *p_, int64_t c0, int64_t c1) {        \
        const bwd_args_##SUFFIX *p = (const bwd_args_##SUFFIX *)p_;                            \
        const int64_t T = T_##SUFFIX##_##NV, B = p->batch;                                     \
        const int64_t np = (B + T - 1) / T;                                                    \
        const int32_t *ccol = p->ccol, *row = p->row, *perm = p->perm;                         \
        const scalar *val = p->val;                                                            \
        scalar *gw_t = p->gw_t;                                                                \
        const int want_gx = p->gx != 0, want_gw = p->gw != 0;                                  \
        scalar buf[VL][T_##SUFFIX##_##NV] __attribute__((aligned(64)));                        \
        if (want_gw)                                                                           \
            for (int64_t j = ccol[c0]; j < ccol[c1]; ++j) gw_t[j] = 0;                         \
        /* the dot products of the weight gradient wait in dots until VL of them (entries     \
           j0, j0 + 1, ... of the transposed pattern, which a panel visits in order) are      \
           summed together */                                                                  \
        vec_##SUFFIX dots[VL];                                                                 \
        for (int64_t q = 0; q < np; ++q) {                                                     \
            const scalar *gp = p->gp + q * p->n_out * T;                                       \
            const scalar *xp = p->xp + q * p->n_in * T;                                        \
            const int64_t nb = B - q * T < T ? B - q * T : T;                                  \
            int64_t j0 = ccol[c0];                                                             \
            int n_dots = 0;                                                                    \
            for (int64_t cb = c0; cb < c1; cb += VL) {                                         \
                const int64_t ce = cb + VL < c1 ? cb + VL : c1;                                \
                for (int64_t c = cb; c < ce; ++c) {                                            \
                    vec_##SUFFIX a[NV];                                                        \
                    for (int v = 0; v < NV; ++v) a[v] = (vec_##SUFFIX){0};                     \
                    const int64_t e = ccol[c + 1];                                             \
                    if (want_gw) {                                                             \
                        const uvec_##SUFFIX *xc = (const uvec_##SUFFIX *)(xp + c * T);         \
                        vec_##SUFFIX xv[NV];                                                   \
                        for (int v = 0; v < NV; ++v) xv[v] = xc[v];                            \
                        for (int64_t j = ccol[c]; j < e; ++j) {                                \
                            const uvec_##SUFFIX *g = (const uvec_##SUFFIX *)(gp + (int64_t)row[j] * T); \
                            vec_##SUFFIX gv[NV];                                               \
                            for (int v = 0; v < NV; ++v) gv[v] = g[v];                         \
                            if (want_gx) {                                                     \
                                const scalar w = val[perm[j]];                                 \
                                for (int v = 0; v < NV; ++v) a[v] += w * gv[v];                \
                            }                                                                  \
                            vec_##SUFFIX d = gv[0] * xv[0];                                    \
                            for (int v = 1; v < NV; ++v) d += gv[v] * xv[v];                   \
                            dots[n_dots++] = d;                                                \
                            if (n_dots == VL) { /* entries j0 .. j0 + VL - 1 are complete */   \
                                *(uvec_##SUFFIX *)(gw_t + j0) += hsums_##SUFFIX(dots);         \
                                j0 += VL;                                                      \
                                n_dots = 0;                                                    \
                            }                                                                  \
                        }                                                                      \
                    } else {                                                                   \
                        vec_##SUFFIX more[((4 / NV) - 1) * NV + 1];                            \
                        for (int v = 0; v < ((4 / NV) - 1) * NV + 1; ++v) more[v] = (vec_##SUFFIX){0}; \
                        int64_t j = ccol[c];                                                   \
                        for (; j + (4 / NV) <= e; j += (4 / NV)) {                             \
                            for (int u = 0; u < (4 / NV); ++u) {                               \
                                const scalar w = val[perm[j + u]];                             \
                                const uvec_##SUFFIX *g =                                       \
                                    (const uvec_##SUFFIX *)(gp + (int64_t)row[j + u] * T);     \
                                vec_##SUFFIX *acc = u ? more + (u - 1) * NV : a;               \
                                for (int v = 0; v < NV; ++v) acc[v] += w * g[v];               \
                            }                                                                  \
                        }                                                                      \
                        for (; j < e; ++j) {                                                   \
                            const scalar w = val[perm[j]];                                     \
                            const uvec_##SUFFIX *g = (const uvec_##SUFFIX *)(gp + (int64_t)row[j] * T); \
                            for (int v = 0; v < NV; ++v) a[v] += w * g[v];                     \
                        }                                                                      \
                        for (int u = 1; u < (4 / NV); ++u)                                     \
                            for (int v = 0; v < NV; ++v) a[v] += more[(u - 1) * NV + v];       \
                    }                                                                          \
                    vec_##SUFFIX *o = (vec_##SUFFIX *)buf[c - cb];                             \
                    for (int v = 0; v < NV; ++v) o[v] = a[v];                                  \
                }                                                                              \
                if (want_gx)                                                                   \
                    store_##SUFFIX##_##NV((const scalar(*)[T_##SUFFIX##_##NV])buf, cb, ce, nb, \
                                          p->gx + q * p->sq, p->si, p->sr);                    \
            }                                                                                  \
            for (int t = 0; t < n_dots; ++t) gw_t[j0 + t] += hsum_##SUFFIX(dots[t]);          \
        }                                                                                      \
    }

/* Argument blocks, the three widths and the entry points of one scalar type. */
#define DEFINE_KERNELS(scalar, SUFFIX, VL)                                                     \
    static inline scalar hsum_##SUFFIX(vec_##SUFFIX v) {                                       \
        union {                                                                                \
            vec_##SUFFIX v;                                                                    \
            half_##SUFFIX h[2];                                                                \
        } a = {v};                                                                             \
        union {                                                                                \
            half_##SUFFIX h;                                                                   \
            quarter_##SUFFIX q[2];                                                             \
        } b = {a.h[0] + a.h[1]};                                                               \
        quarter_##SUFFIX c = b.q[0] + b.q[1];                                                  \
        scalar s = 0;                                                                          \
        for (int l = 0; l < VL / 4; ++l) s += c[l];                                            \
        return s;                                                                              \
    }                                                                                          \
                                                                                               \
    typedef struct {                                                                           \
        const scalar *a, *gate;                                                                \
        int64_t s0, s1, sq, batch, k;                                                          \
        scalar *panels, *colsum;                                                               \
        int64_t q0, q1; /* the panels computed */                                              \
    } pack_args_##SUFFIX;                                                                      \
                                                                                               \
    typedef struct {                                                                           \
        const int32_t *crow, *col;                                                             \
        const scalar *val, *xp, *bias;                                                         \
        int64_t batch, k;                                                                      \
        scalar *y;                                                                             \
        int64_t sq, si, sr;                                                                    \
        int relu;                                                                              \
        int64_t q0, q1; /* the panels computed */                                              \
    } fwd_args_##SUFFIX;                                                                       \
                                                                                               \
    typedef struct {                                                                           \
        const int32_t *ccol, *row, *perm;                                                      \
        const scalar *val, *gp, *xp;                                                           \
        int64_t batch, n_out, n_in;                                                            \
        scalar *gx;                                                                            \
        int64_t sq, si, sr;                                                                    \
        scalar *gw, *gw_t;                                                                     \
    } bwd_args_##SUFFIX;                                                                       \
                                                                                               \
    DEFINE_WIDTH(scalar, SUFFIX, VL, 1)                                                        \
    DEFINE_WIDTH(scalar, SUFFIX, VL, 2)                                                        \
    DEFINE_WIDTH(scalar, SUFFIX, VL, 4)                                                        \
                                                                                               \
    static part_fn by_width_##SUFFIX(int nv, part_fn f1, part_fn f2, part_fn f4) {             \
        return nv == 1 ? f1 : nv == 2 ? f2 : f4;                                               \
    }                                                                                          \
                                                                                               \
    /* panels (ceil(B/T) x K x T, T = nv * VL) <- a[b * s0 + k * s1];                          \
       colsum[k] = sum_b a[b, k] when colsum is not NULL. With s0 == 1, sample b = q * T + i   \
       is read at a[q * sq + i + k * s1] (sq = T for a matrix; a may be panels, even these     \
       panels). */                                                                             \
    void pack_##SUFFIX(int n, const int64_t *splits, int nv, const scalar *a, int64_t s0,      \
                       int64_t s1, int64_t sq, int64_t batch, int64_t k, scalar *panels,       \
                       scalar *colsum, const scalar *gate) {                                   \
        const int64_t np = (batch + nv * VL - 1) / (nv * VL);                                  \
        pack_args_##SUFFIX p = {a, gate, s0, s1, sq, batch, k, panels, colsum, 0, np};         \
        part_fn fn = by_width_##SUFFIX(nv, pack_part_##SUFFIX##_1, pack_part_##SUFFIX##_2,     \
                                       pack_part_##SUFFIX##_4);                                \
        if (n > 1 && !colsum && np % n == 0) /* each thread packs whole panels */              \
            run_panels(n, np, k, fn, &p, sizeof p, offsetof(pack_args_##SUFFIX, q0));          \
        else                                                                                   \
            run_parts(n, splits, fn, &p);                                                      \
    }                                                                                          \
                                                                                               \
    /* y(b, r) = bias[r] + sum_j val[j] * x[b, col[j]] over row r of the CSR (then ReLU if     \
       relu), written at y[q * sq + i * si + r * sr] for b = q * T + i. */                     \
    void csr_forward_##SUFFIX(int n, const int64_t *splits, int nv, const int32_t *crow,       \
                              const int32_t *col, const scalar *val, const scalar *xp,         \
                              int64_t batch, int64_t k, const scalar *bias, int relu,          \
                              scalar *y, int64_t sq, int64_t si, int64_t sr) {                 \
        const int64_t np = (batch + nv * VL - 1) / (nv * VL);                                  \
        fwd_args_##SUFFIX p = {crow, col, val, xp, bias, batch, k, y, sq, si, sr, relu, 0, np}; \
        part_fn fn = by_width_##SUFFIX(nv, forward_part_##SUFFIX##_1,                          \
                                       forward_part_##SUFFIX##_2, forward_part_##SUFFIX##_4);  \
        if (n > 1 && np % n == 0) /* each thread computes whole panels, all rows */            \
            run_panels(n, np, splits[n], fn, &p, sizeof p, offsetof(fwd_args_##SUFFIX, q0));   \
        else                                                                                   \
            run_parts(n, splits, fn, &p);                                                      \
    }                                                                                          \
                                                                                               \
    /* Over the CSR of W^T (ccol, row; perm[j] = position of entry j in W's CSR order, and     \
       inv[perm[j]] = j): gx(b, c) = sum_j val[perm[j]] * g[b, row[j]] at                      \
       gx[q * sq + i * si + c * sr] (skipped when gx is NULL), gw[perm[j]] =                   \
       sum_b g[b, row[j]] * x[b, c] (skipped when gw is NULL; computed into gw_t, scratch of   \
       nnz entries, then gathered through inv). */                                             \
    void csr_backward_##SUFFIX(int n, const int64_t *splits, int nv, const int32_t *ccol,      \
                               const int32_t *row, const int32_t *perm, const int32_t *inv,    \
                               const scalar *val, const scalar *gp, const scalar *xp,          \
                               int64_t batch, int64_t n_out, int64_t n_in, scalar *gx,         \
                               int64_t sq, int64_t si, int64_t sr, scalar *gw, scalar *gw_t) { \
        bwd_args_##SUFFIX p = {ccol, row, perm, val, gp, xp, batch, n_out, n_in,               \
                               gx, sq, si, sr, gw, gw_t};                                      \
        run_parts(n, splits, by_width_##SUFFIX(nv, backward_part_##SUFFIX##_1,                 \
                  backward_part_##SUFFIX##_2, backward_part_##SUFFIX##_4), &p);                \
        if (gw) gather_by_index(n, gw, gw_t, inv, ccol[n_in], sizeof(scalar));                 \
    }

DEFINE_KERNELS(float, f32, 16)
DEFINE_KERNELS(double, f64, 8)

/* Lanes of a 64-byte vector: a panel holds nv times as many samples. */
int lanes_f32(void) { return 16; }
int lanes_f64(void) { return 8; }

/* torch's CPU generator is a 32-bit Mersenne Twister; its state (CPUGeneratorImplState, as
   Generator.get_state() returns it) holds `left` (int32 at byte 8), `next` (uint64 at 16)
   and the 624 words (as uint64 from byte 24). A draw decrements `left`, regenerates the
   words when it reaches 0 (then left = 624, next = 0), and tempers word `next++`. */
#define MT_N 624
#define MT_M 397

static inline uint32_t mt_mix(uint32_t u, uint32_t v) {
    return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

typedef uint32_t vec_u32 __attribute__((vector_size(64)));
typedef uint32_t uvec_u32 __attribute__((vector_size(64), aligned(4)));

/* 16 words of a regeneration at once: word i reads the old words i and i + 1 and word
   i + off, which the loop has already replaced where off < 0 (by at least 16). */
static inline void mt_mix16(uint32_t *w, int i, int off) {
    const vec_u32 u = *(const uvec_u32 *)(w + i), v = *(const uvec_u32 *)(w + i + 1);
    const vec_u32 y = ((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1;
    const vec_u32 odd = (vec_u32){0} - (v & 1u);
    *(uvec_u32 *)(w + i) = *(const uvec_u32 *)(w + i + off) ^ y ^ (odd & 0x9908b0dfu);
}

static void mt_regenerate(uint32_t *w) {
    int i = 0;
    for (; i + 16 <= MT_N - MT_M; i += 16) mt_mix16(w, i, MT_M);
    for (; i < MT_N - MT_M; ++i) w[i] = w[i + MT_M] ^ mt_mix(w[i], w[i + 1]);
    for (; i + 16 <= MT_N - 1; i += 16) mt_mix16(w, i, MT_M - MT_N);
    for (; i < MT_N - 1; ++i) w[i] = w[i + MT_M - MT_N] ^ mt_mix(w[i], w[i + 1]);
    w[MT_N - 1] = w[MT_M - 1] ^ mt_mix(w[MT_N - 1], w[0]);
}

typedef struct { uint32_t w[MT_N]; int64_t left, next; } mt_state;

static inline uint32_t mt_draw(mt_state *s) {
    if (--s->left == 0) { mt_regenerate(s->w); s->left = MT_N; s->next = 0; }
    uint32_t y = s->w[s->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* The generator state `bytes` (Generator.get_state()) in and out of an mt_state. */
static void mt_load(mt_state *s, const unsigned char *bytes) {
    int32_t left;
    uint64_t next, word;
    memcpy(&left, bytes + 8, sizeof left);
    memcpy(&next, bytes + 16, sizeof next);
    for (int i = 0; i < MT_N; ++i) {
        memcpy(&word, bytes + 24 + 8 * i, sizeof word);
        s->w[i] = (uint32_t)word;
    }
    s->left = left;
    s->next = (int64_t)next;
}

static void mt_store(const mt_state *s, unsigned char *bytes) {
    const int32_t left = (int32_t)s->left;
    const uint64_t next = (uint64_t)s->next;
    memcpy(bytes + 8, &left, sizeof left);
    memcpy(bytes + 16, &next, sizeof next);
    for (int i = 0; i < MT_N; ++i) {
        const uint64_t word = s->w[i];
        memcpy(bytes + 24 + 8 * i, &word, sizeof word);
    }
}

/* m draws whose values are not needed: only the regenerations are computed. */
static void mt_skip(mt_state *s, int64_t m) {
    while (m > 0) {
        if (m < s->left) { s->left -= m; s->next += m; return; }
        m -= s->left;  /* the draw that reaches left == 0 regenerates and reads word 0 */
        mt_regenerate(s->w);
        s->left = MT_N;
        s->next = 1;
    }
}

/* Where randperm's shuffle has moved values: value + 1 of each position already swapped
   (0: the position still holds its own index). The first k positions are all swapped and
   sit in an array; the at most k others that a step swaps with sit in a hash table
   (linear probing, keys below 2**27), so memory is O(k), not O(n): a first touch of a page
   of a fresh allocation costs microseconds on some hosts. */
typedef struct {
    int32_t *low;   /* positions [0, k) */
    uint32_t *key;  /* the others; EMPTY_KEY where free */
    int32_t *value;
    uint32_t mask;  /* capacity - 1 */
    int64_t k;
} moved_map;
#define EMPTY_KEY 0xffffffffu

static inline uint32_t moved_slot(const moved_map *m, uint32_t p) {
    uint32_t h = (p * 0x9e3779b1u) & m->mask;
    while (m->key[h] != p && m->key[h] != EMPTY_KEY) h = (h + 1) & m->mask;
    return h;
}

static inline int64_t moved_get(const moved_map *m, int64_t p) {
    if (p < m->k) return m->low[p];
    const uint32_t h = moved_slot(m, (uint32_t)p);
    return m->key[h] == EMPTY_KEY ? 0 : m->value[h];
}

static inline void moved_set(moved_map *m, int64_t p, int64_t v) {
    if (p < m->k) { m->low[p] = (int32_t)v; return; }
    const uint32_t h = moved_slot(m, (uint32_t)p);
    m->key[h] = (uint32_t)p;
    m->value[h] = (int32_t)v;
}

/* The first k (< n < 2**27) entries of torch's CPU randperm(n) from the generator state
   `bytes`, which is advanced as randperm advances it. randperm shuffles with one draw per
   position i < n - 1, swapping i with i + draw % (n - i), so position i is final after step
   i: the prefix needs the first k steps, and the other n - 1 - k draws are skipped.
   Returns -1 when out of memory. */
int randperm_prefix(int64_t n, int64_t k, unsigned char *bytes, int64_t *out) {
    uint32_t capacity = 16;
    while (capacity < 2 * (uint64_t)k) capacity <<= 1;  /* at most half full */
    moved_map m = {calloc((size_t)(k > 0 ? k : 1), sizeof(int32_t)),
                   malloc((size_t)capacity * sizeof(uint32_t)),
                   malloc((size_t)capacity * sizeof(int32_t)), capacity - 1, k};
    if (m.low == NULL || m.key == NULL || m.value == NULL) {
        free(m.low);
        free(m.key);
        free(m.value);
        return -1;
    }
    memset(m.key, 0xff, (size_t)capacity * sizeof(uint32_t));
    mt_state s;
    mt_load(&s, bytes);
    for (int64_t i = 0; i < k; ++i) {
        const int64_t z = i + (int64_t)(mt_draw(&s) % (uint64_t)(n - i));
        const int64_t at_i = m.low[i], at_z = moved_get(&m, z);
        const int64_t a = at_i ? at_i - 1 : i;
        const int64_t b = at_z ? at_z - 1 : z;
        moved_set(&m, z, a + 1);
        m.low[i] = (int32_t)(b + 1);
        out[i] = b;
    }
    free(m.low);
    free(m.key);
    free(m.value);
    mt_skip(&s, n - 1 - k);
    mt_store(&s, bytes);
    return 0;
}

/* out[0, n) as torch's CPU uniform_(from, to) of a float32 tensor fills it from the
   generator state `bytes` (advanced as uniform_ advances it): one 32-bit draw per entry,
   its low 24 bits times 2**-24 as x, then x * (to - from) + from as one fused
   multiply-add (the caller checks that torch rounds so). Draws are taken a run of words at
   a time, so the tempering and the arithmetic vectorise. */
void uniform_f32(int64_t n, float from, float to, unsigned char *bytes, float *out) {
    mt_state s;
    mt_load(&s, bytes);
    const float span = to - from;
    const float scale = 1.0f / 16777216.0f;
    int64_t done = 0;
    while (done < n) {
        if (s.left == 1) { /* the next draw regenerates the words and reads word 0 */
            mt_regenerate(s.w);
            s.left = MT_N + 1;
            s.next = 0;
        }
        int64_t run = s.left - 1; /* draws before the next regeneration */
        if (run > n - done) run = n - done;
        const uint32_t *w = s.w + s.next;
        float *o = out + done;
        for (int64_t i = 0; i < run; ++i) {
            uint32_t y = w[i];
            y ^= y >> 11;
            y ^= (y << 7) & 0x9d2c5680u;
            y ^= (y << 15) & 0xefc60000u;
            y ^= y >> 18;
            o[i] = __builtin_fmaf((float)(y & 0xffffffu) * scale, span, from);
        }
        s.left -= run;
        s.next += run;
        done += run;
    }
    mt_store(&s, bytes);
}

/* w[i] *= mask[i] (0 or 1), then, with scaled, w[i] *= scale: the products torch's
   w.mul_(mask).mul_(scale) computes on a float32 tensor, each rounded once, without the
   float copy of the mask. */
void mask_scale_f32(float *w, const uint8_t *mask, int64_t n, float scale, int scaled) {
    if (scaled) {
        for (int64_t i = 0; i < n; ++i) {
            const float masked = w[i] * (float)mask[i];
            w[i] = masked * scale;
        }
    } else {
        for (int64_t i = 0; i < n; ++i) w[i] = w[i] * (float)mask[i];
    }
}

/* out[j] = the number of a[0, n) below b[j], for sorted a and sorted b (searchsorted,
   left), in one merge pass. */
void sorted_positions(const int64_t *a, int64_t n, const int64_t *b, int64_t m,
                      int64_t *out) {
    int64_t i = 0;
    for (int64_t j = 0; j < m; ++j) {
        while (i < n && a[i] < b[j]) ++i;
        out[j] = i;
    }
}

/* The k largest |v| of a dense gradient, scanned block by block in flat order (RigL's
   regrowth). Candidates (score, flat index) collect in a buffer of 2k; when it is full, a
   selection keeps its k best, and from then on only entries above the worst kept score can
   enter. "Best" is the larger score, of equal scores the lower index; as blocks come in
   increasing flat order, a later entry equal to the worst kept never displaces it, so ties
   go to the lowest flat index. */
typedef struct {
    float s;
    int64_t i;
} topk_cand;

static inline int topk_better(topk_cand a, topk_cand b) {
    return a.s > b.s || (a.s == b.s && a.i < b.i);
}

/* Reorder c[0, n) so that c[0, k) holds its k best (quickselect; keys are distinct). */
static void topk_select(topk_cand *c, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const topk_cand pivot = c[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (topk_better(c[i], pivot)) ++i;
            while (topk_better(pivot, c[j])) --j;
            if (i <= j) {
                const topk_cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

static inline void topk_swap(topk_cand *a, topk_cand *b) {
    const topk_cand t = *a;
    *a = *b;
    *b = t;
}

/* Keep the k best of the buffer (more than k entries) at its front; returns the worst kept
   score. The k-th best score is found 11, 11 and 10 bits at a time from histograms of
   the scores' bit patterns (scores are >= 0, so their bits order them as their values);
   the entries above it are kept, and of those equal to it the ones of lowest index. */
static float topk_compact(topk_cand *c, int64_t *count, int64_t k) {
    static const int shift[3] = {21, 10, 0}, width[3] = {11, 11, 10};
    const int64_t n = *count;
    uint32_t prefix = 0, known = 0; /* the bits of the k-th best score found so far */
    int64_t above = 0;              /* entries whose score is above any with that prefix */
    int64_t hist[1 << 11];
    for (int p = 0; p < 3; ++p) {
        const uint32_t bins = (1u << width[p]) - 1u;
        memset(hist, 0, sizeof(int64_t) << width[p]);
        for (int64_t i = 0; i < n; ++i) { /* branch-free: the prefix test is a coin toss */
            uint32_t bits;
            memcpy(&bits, &c[i].s, sizeof bits);
            hist[(bits >> shift[p]) & bins] += (bits & known) == prefix;
        }
        uint32_t b = bins;
        for (; b > 0 && above + hist[b] < k; --b) above += hist[b];
        prefix |= b << shift[p];
        known |= bins << shift[p];
    }
    float worst;
    memcpy(&worst, &prefix, sizeof worst);
    int64_t kept = 0; /* branch-free partitions: swap always, advance when it belongs */
    for (int64_t i = 0; i < n; ++i) {
        const int64_t in = c[i].s > worst;
        topk_swap(&c[kept], &c[i]);
        kept += in;
    }
    int64_t ties = kept;
    for (int64_t i = kept; i < n; ++i) {
        const int64_t in = c[i].s == worst;
        topk_swap(&c[ties], &c[i]);
        ties += in;
    }
    if (ties - kept > k - kept) topk_select(c + kept, ties - kept, k - kept);
    *count = k;
    return worst;
}

/* The index arrays of the pattern of an n_out x n_in matrix whose active positions are the
   sorted, distinct flat indices flat[0, nnz): row pointers crow (n_out + 1) and columns col;
   the transposed pattern's column pointers crow_t (n_in + 1) and, for position j of the
   column-major order (rows increasing within a column, the order of an argsort of
   col * n_out + row), its row row_t[j] and its entry perm[j]; and inv[perm[j]] = j. One
   counting pass and one placing pass (a counting sort by column); next holds n_in int32. */
void csr_pattern_arrays(int64_t nnz, const int64_t *flat, int64_t n_out, int64_t n_in,
                        int32_t *crow, int32_t *col, int32_t *crow_t, int32_t *row_t,
                        int32_t *perm, int32_t *inv, int32_t *next) {
    memset(crow, 0, (size_t)(n_out + 1) * sizeof(int32_t));
    memset(crow_t, 0, (size_t)(n_in + 1) * sizeof(int32_t));
    for (int64_t e = 0; e < nnz; ++e) {
        const int64_t r = flat[e] / n_in, c = flat[e] - r * n_in;
        col[e] = (int32_t)c;
        ++crow[r + 1];
        ++crow_t[c + 1];
    }
    for (int64_t r = 0; r < n_out; ++r) crow[r + 1] += crow[r];
    for (int64_t c = 0; c < n_in; ++c) {
        next[c] = crow_t[c];
        crow_t[c + 1] += crow_t[c];
    }
    for (int64_t e = 0; e < nnz; ++e) {
        const int32_t j = next[col[e]]++;
        row_t[j] = (int32_t)(flat[e] / n_in);
        perm[j] = (int32_t)e;
        inv[e] = j;
    }
}

/* A lower bound for the k-th best |v| of a first block, so that its scan keeps few more
   than k candidates instead of every entry until the buffer first fills: the lower edge of
   the histogram bin (the top TOPK_BIN_BITS bits of |v|'s bit pattern, which orders
   non-negative floats as it orders their values) that holds the k-th best entry not in
   excl. At least k entries that may be chosen lie at or above it, so no entry below it is
   among the k best. Returns -1 (no bound) when the block has fewer than k such entries. */
#define TOPK_BIN_BITS 11
#define TOPK_BIN_SHIFT (31 - TOPK_BIN_BITS)
static float topk_first_bound(const float *v, int64_t n, int64_t offset, const int64_t *excl,
                              int64_t n_excl, int64_t k) {
    if (n - n_excl < k) return -1.0f;
    int64_t count[1 << TOPK_BIN_BITS];
    memset(count, 0, sizeof count);
    for (int64_t i = 0; i < n; ++i) {
        uint32_t bits;
        memcpy(&bits, v + i, sizeof bits);
        ++count[(bits & 0x7fffffffu) >> TOPK_BIN_SHIFT];
    }
    for (int64_t e = 0; e < n_excl; ++e) {
        uint32_t bits;
        memcpy(&bits, v + (excl[e] - offset), sizeof bits);
        --count[(bits & 0x7fffffffu) >> TOPK_BIN_SHIFT];
    }
    int64_t seen = 0, bin = (1 << TOPK_BIN_BITS) - 1;
    for (; bin > 0; --bin) {
        seen += count[bin];
        if (seen >= k) break;
    }
    if (bin == 0) return -1.0f;
    /* the largest float below the bin's lower edge: entries "above" it are those in the
       bin and the bins above */
    const uint32_t edge = ((uint32_t)bin << TOPK_BIN_SHIFT) - 1u;
    float bound;
    memcpy(&bound, &edge, sizeof bound);
    return bound;
}

/* Whether v[0, n) holds a NaN. */
static int has_nan_f32(const float *v, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const vec_f32 x = *(const uvec_f32 *)(v + i);
        const mask_f32 m = x != x;
        union { mask_f32 m; uint64_t u[8]; } any = {m};
        if (any.u[0] | any.u[1] | any.u[2] | any.u[3] | any.u[4] | any.u[5] | any.u[6] |
            any.u[7])
            return 1;
    }
    for (; i < n; ++i)
        if (v[i] != v[i]) return 1;
    return 0;
}

/* Rank v[0, n) (no NaN; flat indices offset on) into the buffer c (2k entries, *count
   used, *bound the worst kept score, -1 before the first selection); excl (sorted, n_excl)
   lists flat indices of this range that may not be chosen. */
static void topk_scan_range(const float *v, int64_t n, int64_t offset, const int64_t *excl,
                            int64_t n_excl, int64_t k, topk_cand *c, int64_t *count,
                            float *bound) {
    const mask_f32 magnitude = (mask_f32){0} + 0x7fffffff;
    const mask_f32 lane_bit = {1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6,
                               1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12, 1 << 13,
                               1 << 14, 1 << 15};
    float b = *bound;
    if (*count == 0 && b < 0) b = topk_first_bound(v, n, offset, excl, n_excl, k);
    vec_f32 vb = (vec_f32){0} + b;
    int64_t e = 0;
    for (int64_t i = 0; i < n; i += 16) {
        uint32_t lanes;
        if (i + 16 <= n) { /* most runs of 16 hold no entry above the bound */
            const mask_f32 x = (mask_f32)(vec_f32)(*(const uvec_f32 *)(v + i));
            const mask_f32 above = ((vec_f32)(x & magnitude) > vb) & lane_bit;
            union { mask_f32 m; uint64_t u[8]; } any = {above};
            if (!(any.u[0] | any.u[1] | any.u[2] | any.u[3] | any.u[4] | any.u[5] |
                  any.u[6] | any.u[7]))
                continue;
            lanes = 0;
            for (int j = 0; j < 16; ++j) lanes |= (uint32_t)above[j];
        } else {
            lanes = (1u << (n - i)) - 1u;
        }
        for (; lanes; lanes &= lanes - 1) { /* the lanes above the bound, in order */
            const int64_t at = i + __builtin_ctz(lanes);
            const float s = __builtin_fabsf(v[at]);
            if (!(s > b)) continue; /* the bound rose within this run */
            const int64_t id = offset + at;
            while (e < n_excl && excl[e] < id) ++e;
            if (e < n_excl && excl[e] == id) continue;
            c[*count].s = s;
            c[*count].i = id;
            if (++*count == 2 * k) {
                b = topk_compact(c, count, k);
                vb = (vec_f32){0} + b;
            }
        }
    }
    *bound = b;
}

/* Blocks shorter than this are ranked by one thread. */
#define TOPK_SPLIT_MIN 16384

/* Rank v[0, n) (flat indices offset on) into nt buffers: buffer t (2k entries at c + 2kt,
   count[t] used, bound[t] its worst kept score, -1 before its first selection) takes the
   t-th of nt consecutive ranges of the block, on up to nt OpenMP threads. Each buffer thus
   sees its entries in increasing flat order, and any entry it skips is beaten by k that it
   kept, so the best k of all the buffers together are the block stream's best k whatever
   nt is. excl (sorted, n_excl) lists flat indices of this block that may not be chosen.
   Returns 1, changing nothing, when the block holds a NaN (the caller ranks it otherwise);
   else 0. */
int topk_scan_f32(const float *v, int64_t n, int64_t offset, const int64_t *excl,
                  int64_t n_excl, int64_t k, int nt, topk_cand *c, int64_t *count,
                  float *bound) {
    if (n < TOPK_SPLIT_MIN * (int64_t)nt) nt = n < TOPK_SPLIT_MIN ? 1 : (int)(n / TOPK_SPLIT_MIN);
    if (nt < 1) nt = 1;
    int64_t start[65];
    if (nt > 64) nt = 64;
    for (int t = 0; t <= nt; ++t) start[t] = (n * t / nt) & ~(int64_t)15;
    start[nt] = n;
    int nan = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) reduction(| : nan) if (nt > 1)
#endif
    for (int t = 0; t < nt; ++t) nan |= has_nan_f32(v + start[t], start[t + 1] - start[t]);
    if (nan) return 1;
    if (k <= 0) return 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1)
#endif
    for (int t = 0; t < nt; ++t) {
        int64_t e0 = 0, e1 = 0;  /* the exclusions of range t */
        while (e0 < n_excl && excl[e0] < offset + start[t]) ++e0;
        e1 = e0;
        while (e1 < n_excl && excl[e1] < offset + start[t + 1]) ++e1;
        topk_scan_range(v + start[t], start[t + 1] - start[t], offset + start[t], excl + e0,
                        e1 - e0, k, c + 2 * k * t, count + t, bound + t);
    }
    return 0;
}

/* The k best of the buffer at the front (all of it when it holds fewer); returns how many. */
int64_t topk_finish(topk_cand *c, int64_t count, int64_t k) {
    if (count > k) {
        topk_select(c, count, k);
        return k;
    }
    return count;
}
