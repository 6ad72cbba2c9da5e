// kernelkit CuPy fused image preprocessing: crop, flip, rot90, rotate, resize, channel order,
// normalise, cast and layout in one kernel pass.
//
// Same contract and numerics as kernelkit/kernels/numba/preprocess.py; the tap tables and affine
// maps are built on the host by kernelkit/kernels/taps.py and uploaded (see preprocess.py).
//
// One thread computes one output pixel (all channels, in groups of 4 accumulators); a block is
// blockDim.x x blockDim.y output pixels of one image; the 1-D grid folds (image, tile row, tile
// column). An axis-aligned image runs the separable filter as one fused double loop over its
// window, `for kx: v = sum_ky wy * src; acc += wx * v` (the Numba kernel's order: vertical, then
// horizontal); a rotated image (meta AFF != 0) samples its affine map (double positions),
// bilinear or nearest, with `fill` outside the crop. Then (v - mean[c]) * scale[c] in float, the
// conversion and the store with the output's element strides.
//
// Images are read through one base pointer (the first image) plus a per-image element offset and
// element strides (meta table, int64 per image), so batches of any strides and ragged lists need
// no copy.
//
// Kernels are `extern "C"`:  kk_preprocess_<u8|f32>_<f32|f16|u8>  (input -> output element type).
// Only <cuda_fp16.h> is included (NVRTC has no host headers). KK_HOST_EMULATION is for the CPU
// test harness only (it supplies the CUDA names on the host).

#ifndef KK_HOST_EMULATION
#include <cuda_fp16.h>
#endif

namespace kk_pp {

// meta columns; keep in sync with preprocess.py
enum Meta : int {
    OFF = 0, YA = 1, XB = 2, SC = 3, AFF = 4, SH = 5, SW = 6, R0 = 7, R1 = 8, C0 = 9, C1 = 10,
    NKY = 11, NKX = 12, NMETA = 13
};

__device__ __forceinline__ float to_f32(unsigned char v) { return (float)v; }
__device__ __forceinline__ float to_f32(float v) { return v; }

__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_as(unsigned char* p, float v) {
    // round half to even and saturate; NaN -> 0 (as the Numba kernel)
    if (v > 255.0f) v = 255.0f;
    if (!(v >= 0.0f)) v = 0.0f;
    *p = (unsigned char)rintf(v);
}

template <typename TI>
__device__ __forceinline__ float px_or(const TI* p, bool inside, float fillv) {
    return inside ? to_f32(*p) : fillv;
}

template <typename TI, typename TO>
__device__ __forceinline__ void preprocess(
    const TI* __restrict__ src, const long long* __restrict__ meta, const int* __restrict__ yst,
    const float* __restrict__ yw, const int* __restrict__ xst, const float* __restrict__ xw,
    const double* __restrict__ aff, const float* __restrict__ fill, const int* __restrict__ perm,
    const float* __restrict__ mean, const float* __restrict__ scale, TO* __restrict__ out,
    int out_h, int out_w, int tiles_y, int tiles_x, int ky_len, int kx_len, int C,
    long long on, long long oc, long long oy, long long ox, int nearest) {
    const long long blk = blockIdx.x;
    const long long per_img = (long long)tiles_y * tiles_x;
    const int n = (int)(blk / per_img);
    const int t = (int)(blk - (long long)n * per_img);
    const int ty = t / tiles_x;
    const int tx = t - ty * tiles_x;
    const int y = ty * (int)blockDim.y + (int)threadIdx.y;
    const int x = tx * (int)blockDim.x + (int)threadIdx.x;
    if (y >= out_h || x >= out_w) return;

    const long long* m = meta + (long long)n * NMETA;
    const TI* base = src + m[OFF];
    const long long sc = m[SC];
    TO* o = out + (long long)n * on + (long long)y * oy + (long long)x * ox;

    for (int cg = 0; cg < C; cg += 4) {
        const int nc = C - cg < 4 ? C - cg : 4;
        long long coff[4];
        for (int j = 0; j < 4; ++j) coff[j] = j < nc ? (long long)perm[cg + j] * sc : 0;
        float acc[4] = {-0.0f, -0.0f, -0.0f, -0.0f};  // -0.0: the exact additive identity
        if (m[AFF] != 0) {
            const double* a = aff + (long long)n * 6;
            const long long sh = m[SH], sw = m[SW];
            const long long r0 = m[R0], r1 = m[R1], c0 = m[C0], c1 = m[C1];
            const float fillv = fill[n];
            const double yf = (double)y, xf = (double)x;
            const double fx = a[0] * xf + (a[1] * yf + a[2]);
            const double fy = a[3] * xf + (a[4] * yf + a[5]);
            if (nearest) {
                // 0.5 + 2^-30: taps.NEAREST_ROUND (a tie, or within 1e-9 px below one, rounds up)
                const long long ix = (long long)floor(fx + 0.5000000009313226);
                const long long iy = (long long)floor(fy + 0.5000000009313226);
                const bool inside = ix >= c0 && ix < c1 && iy >= r0 && iy < r1;
                const TI* p = base + (inside ? iy * sh + ix * sw : 0);
                for (int j = 0; j < nc; ++j) acc[j] = px_or(p + coff[j], inside, fillv);
            } else {
                const double x0f = floor(fx), y0f = floor(fy);
                const float ax = (float)(fx - x0f), ay = (float)(fy - y0f);
                const long long x0 = (long long)x0f, y0 = (long long)y0f;
                const bool ix0 = x0 >= c0 && x0 < c1, ix1 = x0 + 1 >= c0 && x0 + 1 < c1;
                const bool iy0 = y0 >= r0 && y0 < r1, iy1 = y0 + 1 >= r0 && y0 + 1 < r1;
                const float w00 = (1.0f - ax) * (1.0f - ay), w01 = ax * (1.0f - ay);
                const float w10 = (1.0f - ax) * ay, w11 = ax * ay;
                // pointers are formed only for neighbours inside the crop
                const long long o00 = y0 * sh + x0 * sw;
                for (int j = 0; j < nc; ++j) {
                    const long long q = o00 + coff[j];
                    const float p00 = (ix0 && iy0) ? to_f32(base[q]) : fillv;
                    const float p01 = (ix1 && iy0) ? to_f32(base[q + sw]) : fillv;
                    const float p10 = (ix0 && iy1) ? to_f32(base[q + sh]) : fillv;
                    const float p11 = (ix1 && iy1) ? to_f32(base[q + sh + sw]) : fillv;
                    acc[j] = w00 * p00 + w01 * p01 + w10 * p10 + w11 * p11;
                }
            }
        } else {
            const long long ya = m[YA], xb = m[XB];
            const int nky = (int)m[NKY], nkx = (int)m[NKX];
            const long long row = (long long)n * out_h + y, col = (long long)n * out_w + x;
            const TI* py = base + (long long)yst[row] * ya;
            const long long xs = xst[col];
            const float* wyr = yw + row * ky_len;
            const float* wxr = xw + col * kx_len;
            // a tap of weight 0 (the padding of the tables' windows) is not read: 0 * NaN is NaN
            for (int kx = 0; kx < nkx; ++kx) {
                if (wxr[kx] == 0.0f) continue;
                const TI* p = py + (xs + kx) * xb;
                float v[4] = {-0.0f, -0.0f, -0.0f, -0.0f};
                for (int ky = 0; ky < nky; ++ky) {
                    const float w = wyr[ky];
                    if (w == 0.0f) continue;
                    const TI* pk = p + (long long)ky * ya;
                    for (int j = 0; j < 4; ++j)
                        if (j < nc) v[j] += w * to_f32(pk[coff[j]]);
                }
                const float w = wxr[kx];
                for (int j = 0; j < 4; ++j) acc[j] += w * v[j];
            }
        }
        for (int j = 0; j < nc; ++j)
            store_as(o + (long long)(cg + j) * oc, (acc[j] - mean[cg + j]) * scale[cg + j]);
    }
}

}  // namespace kk_pp

#define KK_PP_KERNEL(tin, TI, tout, TO)                                                          \
    extern "C" __global__ void __launch_bounds__(256, 2) kk_preprocess_##tin##_##tout(           \
        const TI* src, const long long* meta, const int* yst, const float* yw, const int* xst,   \
        const float* xw, const double* aff, const float* fill, const int* perm,                  \
        const float* mean, const float* scale, TO* out, int out_h, int out_w, int tiles_y,       \
        int tiles_x, int ky_len, int kx_len, int C, long long on, long long oc, long long oy,    \
        long long ox, int nearest) {                                                             \
        kk_pp::preprocess<TI, TO>(src, meta, yst, yw, xst, xw, aff, fill, perm, mean, scale, out, \
                                  out_h, out_w, tiles_y, tiles_x, ky_len, kx_len, C, on, oc, oy, \
                                  ox, nearest);                                                  \
    }

// KK-KERNELS-BEGIN
KK_PP_KERNEL(u8, unsigned char, f32, float)
KK_PP_KERNEL(u8, unsigned char, f16, __half)
KK_PP_KERNEL(u8, unsigned char, u8, unsigned char)
KK_PP_KERNEL(f32, float, f32, float)
KK_PP_KERNEL(f32, float, f16, __half)
KK_PP_KERNEL(f32, float, u8, unsigned char)
// KK-KERNELS-END
