// kernelkit CuPy matmul: C[b] = act(A[b] @ B[b] + bias), batched, fp32 accumulation.
//
// A shared-memory tiled, double-buffered SIMT GEMM (the classic "register-blocked SGEMM"):
//   * each thread block computes one BM x BN tile of C for one batch entry;
//   * K is walked in BK steps; while tile t is multiplied out of shared-memory stage t&1, the
//     global loads of tile t+1 are already in flight into registers, and are written to the other
//     stage afterwards (two stages, one __syncthreads per K step);
//   * each thread owns a TM x TN register tile of C, so threads = (BM/TM) * (BN/TN).
// Operands may have any element strides (0 for a broadcast batch, negative, transposed views):
// global loads use generic strides, are bounds-checked and zero-filled at the ragged edges, and are
// mapped onto threads so that consecutive threads read consecutive addresses along whichever axis
// of the operand is unit-stride. fp16 operands are converted to float when they are loaded, so
// shared memory and the accumulators are float32 for both dtypes. The epilogue act(acc + bias) is
// fused and C is written C-contiguous (row stride N, batch stride M*N).
//
// Kernels are `extern "C"` so their names are predictable:
//     kk_matmul_<f32|f16>_<BM>x<BN>x<BK>_<TM>x<TN>
// Built as is (e.g. `nvcc -cubin -arch=sm_90 matmul.cu`) the file instantiates every shipped config
// for both dtypes. The Python launcher compiles one kernel at a time through NVRTC by defining
// KK_SINGLE with KK_DT (f32|f16), KK_T (float|__half) and KK_BM..KK_TN.
//
// Only <cuda_fp16.h> and the local kk_epilogue.cuh are included (NVRTC has no host headers);
// erff/tanhf/expf/fmaf are built-ins.
// KK_HOST_EMULATION is for the CPU test harness only (it supplies the CUDA names on the host).

#ifndef KK_HOST_EMULATION
#include <cuda_fp16.h>
#endif

namespace kk {

#include "kk_epilogue.cuh"

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// Register tile <-> tile coordinate. Each thread's TM rows (TN columns) come in runs of V
// consecutive rows (columns), V = min(4, TM); run r of thread t starts at r*(threads*V) + t*V.
// So in shared memory the threads of a warp read consecutive 16-byte chunks (conflict-free,
// vectorisable), and a thread's rows are distinct and cover [0, BM) exactly once over all threads:
//   (i / V) in [0, TM/V), t*V + i%V in [0, T*V)  ->  row in [0, TM*T) bijectively.
template <int TM, int T>
__device__ __forceinline__ int reg_to_tile(int t, int i) {
    constexpr int V = TM < 4 ? TM : 4;
    static_assert(TM % V == 0, "TM (TN) must be 1, 2, 3 or a multiple of 4");
    return (i / V) * (T * V) + t * V + (i % V);
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void matmul_body(
    const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias,
    T* __restrict__ C, int M, int N, int K, int tiles_m, int tiles_n,
    long long sab, long long sam, long long sak,  // A strides in elements: batch, row, col
    long long sbb, long long sbk, long long sbn,  // B strides in elements: batch, row, col
    long long sbias, int has_bias, int act) {
    constexpr int TX = BN / TN;  // threads along N
    constexpr int TY = BM / TM;  // threads along M
    constexpr int NT = TX * TY;  // threads per block
    constexpr int A_LOADS = BM * BK / NT;  // A elements each thread loads per K tile
    constexpr int B_LOADS = BK * BN / NT;  // B elements each thread loads per K tile
    constexpr int PAD = 4;  // keeps rows 16-byte aligned
    constexpr int GROUP_M = 8;
    static_assert(BM % TM == 0 && BN % TN == 0, "BM % TM and BN % TN must be 0");
    static_assert(NT >= 32 && NT <= 1024, "threads per block must be in [32, 1024]");
    static_assert(A_LOADS * NT == BM * BK, "BM*BK must be a multiple of the thread count");
    static_assert(B_LOADS * NT == BK * BN, "BK*BN must be a multiple of the thread count");
    static_assert(2 * BK * (BM + BN + 2 * PAD) * 4 <= 48 * 1024, "static shared memory > 48 KiB");

    // Stage s holds A[m0 : m0+BM, k0 : k0+BK] transposed (As[s][k][m]) and
    // B[k0 : k0+BK, n0 : n0+BN] (Bs[s][k][n]), both as float.
    __shared__ __align__(16) float As[2][BK][BM + PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + PAD];

    const int tid = (int)threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;

    // Block -> (batch, tile row, tile col). Tiles of one batch entry are visited in GROUP_M-row
    // super-groups (as in Triton's matmul tutorial) so neighbouring blocks share B columns in L2.
    const int tiles_per_batch = tiles_m * tiles_n;
    const int bid = (int)blockIdx.x;
    const int batch = bid / tiles_per_batch;
    const int pid = bid - batch * tiles_per_batch;
    const int pids_in_group = GROUP_M * tiles_n;
    const int group_id = pid / pids_in_group;
    const int first_m = group_id * GROUP_M;
    const int group_size = imin(tiles_m - first_m, GROUP_M);
    const int pid_m = first_m + (pid % pids_in_group) % group_size;
    const int pid_n = (pid % pids_in_group) / group_size;
    const int m0 = pid_m * BM;
    const int n0 = pid_n * BN;

    const T* __restrict__ Ab = A + (long long)batch * sab;
    const T* __restrict__ Bb = B + (long long)batch * sbb;
    T* __restrict__ Cb = C + (long long)batch * ((long long)M * (long long)N);

    // Global -> thread mapping of the tile loads: element e = tid + i*NT of the tile, walked along
    // the operand's unit-stride axis so a warp's loads coalesce. Uniform across the block.
    const bool a_m_fast = (sam == 1 && sak != 1);  // column-major A: walk along M
    const bool b_k_fast = (sbk == 1 && sbn != 1);  // column-major B: walk along K

    float ra[A_LOADS];
    float rb[B_LOADS];
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    }

    const int num_k_tiles = (K + BK - 1) / BK;

    // (r, c) of load slot i: r = row of the tile (M for A, K for B), c = column (K for A, N for B).
    // e = tid + i*NT runs over [0, BM*BK) (resp. [0, BK*BN)) exactly once over all threads.
    auto a_rc = [&](int i, int& r, int& c) {
        const int e = tid + i * NT;
        r = a_m_fast ? (e % BM) : (e / BK);
        c = a_m_fast ? (e / BM) : (e % BK);
    };
    auto b_rc = [&](int i, int& r, int& c) {
        const int e = tid + i * NT;
        r = b_k_fast ? (e % BK) : (e / BN);
        c = b_k_fast ? (e / BK) : (e % BN);
    };
    // Global loads of K tile kt into registers (zero outside the matrices).
    auto load_global = [&](int kt) {
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            int r, c;
            a_rc(i, r, c);
            const int gm = m0 + r, gk = k0 + c;
            ra[i] = (gm < M && gk < K) ? to_f32(Ab[gm * sam + gk * sak]) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            int r, c;
            b_rc(i, r, c);
            const int gk = k0 + r, gn = n0 + c;
            rb[i] = (gk < K && gn < N) ? to_f32(Bb[gk * sbk + gn * sbn]) : 0.0f;
        }
    };
    // Registers -> shared-memory stage s.
    auto store_smem = [&](int s) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            int r, c;
            a_rc(i, r, c);
            As[s][c][r] = ra[i];
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            int r, c;
            b_rc(i, r, c);
            Bs[s][r][c] = rb[i];
        }
    };

    if (num_k_tiles > 0) {
        load_global(0);
        store_smem(0);
        __syncthreads();  // stage 0 is complete

        for (int kt = 0; kt < num_k_tiles; ++kt) {
            const int cur = kt & 1;
            const bool has_next = kt + 1 < num_k_tiles;
            // Issue the global loads of the next tile; they complete while we compute this one.
            if (has_next) load_global(kt + 1);

#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float fa[TM];
                float fb[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) fa[i] = As[cur][kk][reg_to_tile<TM, TY>(ty, i)];
#pragma unroll
                for (int j = 0; j < TN; ++j) fb[j] = Bs[cur][kk][reg_to_tile<TN, TX>(tx, j)];
#pragma unroll
                for (int i = 0; i < TM; ++i) {
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(fa[i], fb[j], acc[i][j]);
                }
            }

            // Stage cur^1 was last read in iteration kt-1, and every thread has passed the
            // __syncthreads that ended it, so it can be overwritten now. The barrier below makes
            // the new stage visible before iteration kt+1 reads it, and keeps any thread from
            // starting iteration kt+1 (which overwrites stage cur) while others still read it.
            if (has_next) store_smem(cur ^ 1);
            __syncthreads();
        }
    }

    // Epilogue: act(acc + bias), bounds-checked store into C-contiguous C.
    float bv[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int gn = n0 + reg_to_tile<TN, TX>(tx, j);
        bv[j] = (has_bias && gn < N) ? to_f32(bias[gn * sbias]) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int gm = m0 + reg_to_tile<TM, TY>(ty, i);
        if (gm >= M) continue;
        T* __restrict__ crow = Cb + (long long)gm * (long long)N;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int gn = n0 + reg_to_tile<TN, TX>(tx, j);
            if (gn < N) store_as(crow + gn, apply_act(acc[i][j] + bv[j], act));
        }
    }
}

}  // namespace kk

#define KK_NAME_(DT, BM, BN, BK, TM, TN) kk_matmul_##DT##_##BM##x##BN##x##BK##_##TM##x##TN
#define KK_INSTANTIATE_(DT, T, BM, BN, BK, TM, TN)                                              \
    extern "C" __global__ void __launch_bounds__((BM / TM) * (BN / TN))                         \
        KK_NAME_(DT, BM, BN, BK, TM, TN)(                                                       \
            const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias,       \
            T* __restrict__ C, int M, int N, int K, int tiles_m, int tiles_n, long long sab,    \
            long long sam, long long sak, long long sbb, long long sbk, long long sbn,          \
            long long sbias, int has_bias, int act) {                                           \
        kk::matmul_body<T, BM, BN, BK, TM, TN>(A, B, bias, C, M, N, K, tiles_m, tiles_n, sab,   \
                                               sam, sak, sbb, sbk, sbn, sbias, has_bias, act);  \
    }
// One level of indirection so that macro arguments (-DKK_BM=128 ...) expand before pasting.
#define KK_INSTANTIATE(DT, T, BM, BN, BK, TM, TN) KK_INSTANTIATE_(DT, T, BM, BN, BK, TM, TN)

#if defined(KK_SINGLE)
KK_INSTANTIATE(KK_DT, KK_T, KK_BM, KK_BN, KK_BK, KK_TM, KK_TN)
#else
// The shipped configs (keep in sync with SHIPPED_CONFIGS in matmul.py; a test checks it).
#define KK_BOTH(BM, BN, BK, TM, TN)                   \
    KK_INSTANTIATE(f32, float, BM, BN, BK, TM, TN)    \
    KK_INSTANTIATE(f16, __half, BM, BN, BK, TM, TN)
// KK-SHIPPED-BEGIN
KK_BOTH(128, 128, 8, 8, 8)
KK_BOTH(128, 128, 16, 8, 8)
KK_BOTH(128, 64, 8, 8, 4)
KK_BOTH(64, 128, 8, 4, 8)
KK_BOTH(64, 64, 8, 4, 4)
KK_BOTH(64, 64, 16, 4, 4)
KK_BOTH(32, 32, 8, 4, 4)
// KK-SHIPPED-END
#endif
