// The fused epilogue's pieces shared by matmul.cu and conv2d.cu: activation codes (ACT_CODES in
// _common.py), float32 <-> element type, and the activation itself. Included inside each file's
// namespace; it includes nothing (NVRTC has no host headers). The launchers hand NVRTC one
// string with this file inlined (_common.source), so cupy's kernel cache sees every change.

enum Act : int { ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2, ACT_GELU_TANH = 3, ACT_SILU = 4 };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half_rn(v); }

__device__ __forceinline__ float apply_act(float v, int act) {
    switch (act) {
        case ACT_RELU:  // NaN < 0 is false, so NaN propagates (as in torch)
            return v < 0.0f ? 0.0f : v;
        case ACT_GELU:  // exact: 0.5 x (1 + erf(x / sqrt(2))) == 0.5 x erfc(-x / sqrt(2)), no cancellation
            return 0.5f * v * erfcf(-v * 0.70710678118654752440f);
        case ACT_GELU_TANH: {  // torch approximate="tanh": 0.5 x (1 + tanh(u)) == x / (1 + exp(-2u)),
                               // u = sqrt(2/pi) (x + 0.044715 x^3); no cancellation near tanh(u) = -1
            const float inner = 0.79788456080286535588f * (v + 0.044715f * v * v * v);
            return v / (1.0f + expf(-2.0f * inner));
        }
        case ACT_SILU: {  // torch's x / (1 + exp(-x)), as x e / (1 + e), e = exp(x), for x < 0:
            // exp(-x) overflowed below -88.72, where SiLU is a float32 normal down to -91.8
            const float e = expf(-fabsf(v));
            return (v < 0.0f ? v * e : v) / (1.0f + e);
        }
        default:
            return v;
    }
}
