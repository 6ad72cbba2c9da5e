// kernelkit CuPy conv2d: forward (fused bias + activation), backward input, backward weight.
//
// Tensors are addressed through element strides given in (n, c, h, w) order for activations and
// (k, c, r, s) for the weight, so NCHW and NHWC (and any other strides) need no copy. Padding is
// (top, left) here (bottom / right only shape the output, which the launcher computes).
//
//   kk_conv2d_fwd_<dt>_<BM>x<BN>x<BK>_<TM>x<TN>  implicit GEMM: M = N*Ho*Wo pixels, N = K/groups
//       output channels of group blockIdx.y, reduction over j = (r*S + s)*Cg + c (c fastest, the
//       contiguous axis of NHWC). A shared-memory tiled SIMT GEMM (single-buffered, one
//       __syncthreads pair per BK step) with a TM x TN register tile per thread; the im2col gather
//       is done while loading A: each thread's A rows are fixed for the whole loop, so their
//       (n, oh, ow) decomposition is computed once, and only the column j is decomposed per step.
//   kk_conv2d_fwd_direct_<dt>       one thread per output element (depthwise, few channels per
//       group): sum over c < Cg and the R x S taps, in float32.
//   kk_conv2d_bwd_input_<dt>        one thread per grad_in element: sum over the K/groups output
//       channels and the taps whose output pixel ((ih + top - r*dh) / sh, ...) is exact and in
//       range (so stride > 1 is handled exactly).
//   kk_conv2d_bwd_weight_<dt>       one block per grad_weight element: the block's threads stride
//       over the N*Ho*Wo pixels and reduce in shared memory (float32, fixed order).
// Threads of the one-per-element kernels walk the output in its memory order (NCHW or NHWC, the
// `cl` flag), so consecutive threads write consecutive addresses.
//
// Built as is (`nvcc -cubin -arch=sm_90 conv2d.cu`) the file instantiates every shipped config
// and every simple kernel for both dtypes. The launcher compiles through NVRTC with either
// KK_SINGLE (KK_DT, KK_T, KK_BM..KK_TN: one forward GEMM) or KK_SIMPLE (KK_DT, KK_T: the three
// one-per-element / reduction kernels of one dtype).
// Only <cuda_fp16.h> and the local kk_epilogue.cuh are included (NVRTC has no host headers).
// KK_HOST_EMULATION is for the CPU test harness only (it supplies the CUDA names on the host).

#ifndef KK_HOST_EMULATION
#include <cuda_fp16.h>
#endif

namespace kk_conv {

#include "kk_epilogue.cuh"

typedef long long ll;

// The convolution's shape and geometry (built inside each kernel from its int arguments).
struct Geom {
    int N, C, H, W, K, Ho, Wo, R, S, Cg, Kg;
    int sh, sw, pt, pl, dh, dw;
};

template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void fwd_gemm_body(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
    T* __restrict__ y, const Geom g,
    ll sxn, ll sxc, ll sxh, ll sxw,     // x strides (n, c, h, w)
    ll swk, ll swc, ll swr, ll sws,     // weight strides (k, c, r, s)
    ll sbias,
    ll syn, ll syk, ll syh, ll syw,     // y strides (n, k, h, w)
    int tiles_n, int has_bias, int act) {
    constexpr int TX = BN / TN;
    constexpr int TY = BM / TM;
    constexpr int NT = TX * TY;
    constexpr int A_LOADS = BM * BK / NT;
    constexpr int B_LOADS = BK * BN / NT;
    constexpr int PAD = 4;
    static_assert(BM % TM == 0 && BN % TN == 0, "BM % TM and BN % TN must be 0");
    static_assert(NT >= 32 && NT <= 1024, "threads per block must be in [32, 1024]");
    static_assert(A_LOADS * NT == BM * BK, "BM*BK must be a multiple of the thread count");
    static_assert(B_LOADS * NT == BK * BN, "BK*BN must be a multiple of the thread count");
    static_assert(NT % BK == 0, "the thread count must be a multiple of BK");

    __shared__ __align__(16) float As[BK][BM + PAD];
    __shared__ __align__(16) float Bs[BK][BN + PAD];

    const int tid = (int)threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int grp = (int)blockIdx.y;
    const int pid_m = (int)blockIdx.x / tiles_n;
    const int pid_n = (int)blockIdx.x % tiles_n;
    const int m0 = pid_m * BM;
    const int n0 = pid_n * BN;
    const int M = g.N * g.Ho * g.Wo;
    const int KT = g.Cg * g.R * g.S;

    // A slot i of this thread: tile row e / BK, tile column e % BK (e = tid + i*NT); since NT is
    // a multiple of BK, the column is the same for every slot, and the rows are fixed for the
    // whole loop, so their pixel decomposition is done once.
    const int a_col = tid % BK;
    const T* a_base[A_LOADS];
    int a_ih0[A_LOADS], a_iw0[A_LOADS];
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int gm = m0 + (tid + i * NT) / BK;
        if (gm < M) {
            const int ow = gm % g.Wo;
            const int oh = (gm / g.Wo) % g.Ho;
            const int n = gm / (g.Wo * g.Ho);
            a_base[i] = x + (ll)n * sxn + (ll)grp * g.Cg * sxc;
            a_ih0[i] = oh * g.sh - g.pt;
            a_iw0[i] = ow * g.sw - g.pl;
        } else {
            a_base[i] = x;
            a_ih0[i] = -(1 << 29);  // never in range
            a_iw0[i] = 0;
        }
    }
    // B slot i: tile row (reduction index) e % BK, tile column (output channel) e / BK.
    const T* w_g = w + (ll)grp * g.Kg * swk;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < KT; k0 += BK) {
        {
            const int gk = k0 + a_col;
            const bool k_ok = gk < KT;
            const int c = k_ok ? gk % g.Cg : 0;
            const int rs = k_ok ? gk / g.Cg : 0;
            const int r = rs / g.S, s = rs % g.S;
            const ll koff = (ll)c * sxc;
#pragma unroll
            for (int i = 0; i < A_LOADS; ++i) {
                const int ih = a_ih0[i] + r * g.dh;
                const int iw = a_iw0[i] + s * g.dw;
                float v = 0.0f;
                if (k_ok && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                    v = to_f32(a_base[i][koff + (ll)ih * sxh + (ll)iw * sxw]);
                As[a_col][(tid + i * NT) / BK] = v;
            }
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int e = tid + i * NT;
            const int kr = e % BK, nc = e / BK;
            const int gk = k0 + kr, gn = n0 + nc;
            float v = 0.0f;
            if (gk < KT && gn < g.Kg) {
                const int c = gk % g.Cg, rs = gk / g.Cg;
                v = to_f32(w_g[(ll)gn * swk + (ll)c * swc + (ll)(rs / g.S) * swr +
                               (ll)(rs % g.S) * sws]);
            }
            Bs[kr][nc] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float fa[TM], fb[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) fa[i] = As[kk][ty + i * TY];
#pragma unroll
            for (int j = 0; j < TN; ++j) fb[j] = Bs[kk][tx + j * TX];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }

    // Epilogue: act(acc + bias) in float32, one cast, bounds-checked strided store. Columns
    // tx + j*TX: consecutive threads write consecutive channels (contiguous in NHWC).
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int gn = n0 + tx + j * TX;
        if (gn >= g.Kg) continue;
        const int k = grp * g.Kg + gn;
        const float bv = has_bias ? to_f32(bias[(ll)k * sbias]) : 0.0f;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int gm = m0 + ty + i * TY;
            if (gm >= M) continue;
            const int ow = gm % g.Wo;
            const int oh = (gm / g.Wo) % g.Ho;
            const int n = gm / (g.Wo * g.Ho);
            store_as(y + (ll)n * syn + (ll)k * syk + (ll)oh * syh + (ll)ow * syw,
                     apply_act(acc[i][j] + bv, act));
        }
    }
}

// Linear index o of an (n, ch, h, w) tensor walked in memory order: NHWC (cl) or NCHW.
__device__ __forceinline__ void unravel(ll o, int C, int H, int W, int cl, int& n, int& ch,
                                        int& h, int& w) {
    if (cl) {
        ch = (int)(o % C);
        o /= C;
        w = (int)(o % W);
        o /= W;
        h = (int)(o % H);
        n = (int)(o / H);
    } else {
        w = (int)(o % W);
        o /= W;
        h = (int)(o % H);
        o /= H;
        ch = (int)(o % C);
        n = (int)(o / C);
    }
}

template <typename T>
__device__ __forceinline__ void fwd_direct_body(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
    T* __restrict__ y, const Geom g, ll sxn, ll sxc, ll sxh, ll sxw, ll swk, ll swc, ll swr,
    ll sws, ll sbias, ll syn, ll syk, ll syh, ll syw, int cl, int has_bias, int act) {
    const ll total = (ll)g.N * g.K * g.Ho * g.Wo;
    const ll o = (ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= total) return;
    int n, k, oh, ow;
    unravel(o, g.K, g.Ho, g.Wo, cl, n, k, oh, ow);
    const int c0 = (k / g.Kg) * g.Cg;
    const T* xn = x + (ll)n * sxn;
    const T* wk = w + (ll)k * swk;
    float acc = 0.0f;
    // A padded tap multiplies a zero into the sum, as torch and the GEMM kernel do: an Inf or
    // NaN weight there makes the pixel NaN (skipped, it gave a finite border where they give NaN).
    for (int c = 0; c < g.Cg; ++c) {
        const T* xc = xn + (ll)(c0 + c) * sxc;
        for (int r = 0; r < g.R; ++r) {
            const int ih = oh * g.sh - g.pt + r * g.dh;
            const bool row_in = ih >= 0 && ih < g.H;
            for (int s = 0; s < g.S; ++s) {
                const int iw = ow * g.sw - g.pl + s * g.dw;
                const float xv = row_in && iw >= 0 && iw < g.W
                                     ? to_f32(xc[(ll)ih * sxh + (ll)iw * sxw]) : 0.0f;
                acc = fmaf(xv, to_f32(wk[(ll)c * swc + (ll)r * swr + (ll)s * sws]), acc);
            }
        }
    }
    if (has_bias) acc += to_f32(bias[(ll)k * sbias]);
    store_as(y + (ll)n * syn + (ll)k * syk + (ll)oh * syh + (ll)ow * syw, apply_act(acc, act));
}

template <typename T>
__device__ __forceinline__ void bwd_input_body(
    const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, const Geom g,
    ll sdyn, ll sdyk, ll sdyh, ll sdyw, ll swk, ll swc, ll swr, ll sws, ll sdxn, ll sdxc,
    ll sdxh, ll sdxw, int cl) {
    const ll total = (ll)g.N * g.C * g.H * g.W;
    const ll o = (ll)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= total) return;
    int n, ci, ih, iw;
    unravel(o, g.C, g.H, g.W, cl, n, ci, ih, iw);
    const int k0 = (ci / g.Cg) * g.Kg;
    const int cl_ = ci % g.Cg;
    const T* dyn = dy + (ll)n * sdyn;
    float acc = 0.0f;
    for (int r = 0; r < g.R; ++r) {
        const int th = ih + g.pt - r * g.dh;
        if (th < 0 || th % g.sh) continue;
        const int oh = th / g.sh;
        if (oh >= g.Ho) continue;
        for (int s = 0; s < g.S; ++s) {
            const int tw = iw + g.pl - s * g.dw;
            if (tw < 0 || tw % g.sw) continue;
            const int ow = tw / g.sw;
            if (ow >= g.Wo) continue;
            const T* dyp = dyn + (ll)oh * sdyh + (ll)ow * sdyw;
            const T* wp = w + (ll)cl_ * swc + (ll)r * swr + (ll)s * sws;
            for (int kk = 0; kk < g.Kg; ++kk) {
                const int k = k0 + kk;
                acc = fmaf(to_f32(dyp[(ll)k * sdyk]), to_f32(wp[(ll)k * swk]), acc);
            }
        }
    }
    store_as(dx + (ll)n * sdxn + (ll)ci * sdxc + (ll)ih * sdxh + (ll)iw * sdxw, acc);
}

#ifndef KK_BWD_W_THREADS
#define KK_BWD_W_THREADS 256  // BWD_WEIGHT_THREADS in conv2d.py (the host emulation uses fewer)
#endif
constexpr int BWD_W_THREADS = KK_BWD_W_THREADS;

template <typename T>
__device__ __forceinline__ void bwd_weight_body(
    const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dwt, const Geom g,
    ll sxn, ll sxc, ll sxh, ll sxw, ll sdyn, ll sdyk, ll sdyh, ll sdyw) {
    // Block b -> weight element (k, c, r, s) of the contiguous (K, Cg, R, S) result.
    __shared__ float red[BWD_W_THREADS];
    const ll b = (ll)blockIdx.x;
    const int s = (int)(b % g.S);
    const int r = (int)((b / g.S) % g.R);
    const int c = (int)((b / ((ll)g.S * g.R)) % g.Cg);
    const int k = (int)(b / ((ll)g.S * g.R * g.Cg));
    const int ci = (k / g.Kg) * g.Cg + c;
    const T* xc = x + (ll)ci * sxc;
    const T* dyk = dy + (ll)k * sdyk;
    const ll P = (ll)g.N * g.Ho * g.Wo;
    float acc = 0.0f;
    for (ll p = threadIdx.x; p < P; p += BWD_W_THREADS) {
        const int ow = (int)(p % g.Wo);
        const int oh = (int)((p / g.Wo) % g.Ho);
        const int n = (int)(p / ((ll)g.Wo * g.Ho));
        const int ih = oh * g.sh - g.pt + r * g.dh;
        const int iw = ow * g.sw - g.pl + s * g.dw;
        // (a padded pixel is a zero times dy, as in torch: an Inf or NaN dy there gives NaN)
        const float xv = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W
                             ? to_f32(xc[(ll)n * sxn + (ll)ih * sxh + (ll)iw * sxw]) : 0.0f;
        acc = fmaf(to_f32(dyk[(ll)n * sdyn + (ll)oh * sdyh + (ll)ow * sdyw]), xv, acc);
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int half = BWD_W_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) store_as(dwt + b, red[0]);
}

}  // namespace kk_conv

// ------------------------------------------------------------------------------ instantiations

// The geometry travels as 17 plain ints (launchers pass numpy int32 scalars, no struct).
#define KK_GEOM_PARAMS                                                                     \
    int N, int C, int H, int W, int K, int Ho, int Wo, int R, int S, int Cg, int Kg, int sh, \
        int sw, int pt, int pl, int dh, int dw
#define KK_GEOM {N, C, H, W, K, Ho, Wo, R, S, Cg, Kg, sh, sw, pt, pl, dh, dw}

#define KK_CONV_NAME_(DT, BM, BN, BK, TM, TN) kk_conv2d_fwd_##DT##_##BM##x##BN##x##BK##_##TM##x##TN
#define KK_CONV_GEMM_(DT, T, BM, BN, BK, TM, TN)                                                 \
    extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN))                          \
        KK_CONV_NAME_(DT, BM, BN, BK, TM, TN)(                                                   \
            const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,        \
            T* __restrict__ y, KK_GEOM_PARAMS, long long sxn, long long sxc,                    \
            long long sxh, long long sxw, long long swk, long long swc, long long swr,           \
            long long sws, long long sbias, long long syn, long long syk, long long syh,         \
            long long syw, int tiles_n, int has_bias, int act) {                                 \
        kk_conv::fwd_gemm_body<T, BM, BN, BK, TM, TN>(x, w, bias, y, KK_GEOM, sxn, sxc, sxh, sxw, swk, \
                                                      swc, swr, sws, sbias, syn, syk, syh, syw,  \
                                                      tiles_n, has_bias, act);                   \
    }
#define KK_CONV_GEMM(DT, T, BM, BN, BK, TM, TN) KK_CONV_GEMM_(DT, T, BM, BN, BK, TM, TN)

#define KK_CONV_SIMPLE_(DT, T)                                                                   \
    extern "C" __global__ void kk_conv2d_fwd_direct_##DT(                                        \
        const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,            \
        T* __restrict__ y, KK_GEOM_PARAMS, long long sxn, long long sxc, long long sxh,         \
        long long sxw, long long swk, long long swc, long long swr, long long sws,               \
        long long sbias, long long syn, long long syk, long long syh, long long syw, int cl,     \
        int has_bias, int act) {                                                                 \
        kk_conv::fwd_direct_body<T>(x, w, bias, y, KK_GEOM, sxn, sxc, sxh, sxw, swk, swc, swr, sws,    \
                                    sbias, syn, syk, syh, syw, cl, has_bias, act);               \
    }                                                                                            \
    extern "C" __global__ void kk_conv2d_bwd_input_##DT(                                         \
        const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,                   \
        KK_GEOM_PARAMS, long long sdyn, long long sdyk, long long sdyh, long long sdyw,   \
        long long swk, long long swc, long long swr, long long sws, long long sdxn,              \
        long long sdxc, long long sdxh, long long sdxw, int cl) {                                \
        kk_conv::bwd_input_body<T>(dy, w, dx, KK_GEOM, sdyn, sdyk, sdyh, sdyw, swk, swc, swr, sws,     \
                                   sdxn, sdxc, sdxh, sdxw, cl);                                  \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(kk_conv::BWD_W_THREADS)                         \
        kk_conv2d_bwd_weight_##DT(const T* __restrict__ x, const T* __restrict__ dy,             \
                                  T* __restrict__ dwt, KK_GEOM_PARAMS, long long sxn,     \
                                  long long sxc, long long sxh, long long sxw, long long sdyn,   \
                                  long long sdyk, long long sdyh, long long sdyw) {              \
        kk_conv::bwd_weight_body<T>(x, dy, dwt, KK_GEOM, sxn, sxc, sxh, sxw, sdyn, sdyk, sdyh, sdyw);  \
    }
#define KK_CONV_SIMPLE(DT, T) KK_CONV_SIMPLE_(DT, T)

#if defined(KK_SINGLE)
KK_CONV_GEMM(KK_DT, KK_T, KK_BM, KK_BN, KK_BK, KK_TM, KK_TN)
#elif defined(KK_SIMPLE)
KK_CONV_SIMPLE(KK_DT, KK_T)
#else
KK_CONV_SIMPLE(f32, float)
KK_CONV_SIMPLE(f16, __half)
// The shipped configs (keep in sync with SHIPPED_CONFIGS in conv2d.py; a test checks it).
#define KK_CONV_BOTH(BM, BN, BK, TM, TN)                   \
    KK_CONV_GEMM(f32, float, BM, BN, BK, TM, TN)           \
    KK_CONV_GEMM(f16, __half, BM, BN, BK, TM, TN)
// KK-SHIPPED-BEGIN
KK_CONV_BOTH(64, 64, 8, 4, 4)
KK_CONV_BOTH(128, 128, 8, 8, 8)
KK_CONV_BOTH(128, 64, 8, 8, 4)
KK_CONV_BOTH(64, 128, 8, 4, 8)
KK_CONV_BOTH(32, 64, 8, 2, 4)
// KK-SHIPPED-END
#endif
