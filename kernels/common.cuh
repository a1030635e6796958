// Device helpers shared by the pointwise kernels (lstm.cu, gru.cu, reduce.cu).
//
// Template parameters of every kernel: S is the storage type, C the compute type:
//   S = C = float or double, or S = __half or __nv_bfloat16 with C = float.
// The buffers of a whole sequence (x Wᵀ, gates, y, da) hold S; the arithmetic runs in C, and so do the
// buffers that carry a value from one step to the next (c, the gradient carries) and the per-step GEMM
// outputs that feed them: c accumulates over T, and rounding it to S every step would drift.
// One thread per element (b, j) of a [B, H] step; no shared memory.
#pragma once

#ifdef __CUDACC__  // NVRTC or nvcc; the host build (host.h) defines its own __half and __nv_bfloat16
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

constexpr int PEEPHOLE_NONE = 0;
constexpr int PEEPHOLE_FULL = 1;      // c Wchᵀ from a GEMM of its own, added in the kernel
constexpr int PEEPHOLE_DIAGONAL = 2;  // w_i∘c, w_f∘c, w_o∘c' in the kernel

// σ(a) = 1 / (1 + e^-a) through e = e^-|a| <= 1: no overflow for any |a|, NaN stays NaN.
template <typename C>
__device__ __forceinline__ C sigmoid(const C a) {
  const C e = exp(-fabs(a));
  return a >= C(0) ? C(1) / (C(1) + e) : e / (C(1) + e);
}

// The LSTM candidate g = tanh(a) (the standard cell) or σ(a) (the seed's), and dg/da from g.
template <bool SIGMOID, typename C>
__device__ __forceinline__ C candidate(const C a) {
  if constexpr (SIGMOID) return sigmoid(a);
  else return tanh(a);
}
template <bool SIGMOID, typename C>
__device__ __forceinline__ C candidate_grad(const C g) {
  if constexpr (SIGMOID) return g * (C(1) - g);
  else return C(1) - g * g;
}

// c clipped to [−bound, bound] (cell_clip); NaN stays NaN, which fmin/fmax would drop.
template <typename C>
__device__ __forceinline__ C clip(const C c, const C bound) {
  return c > bound ? bound : (c < -bound ? -bound : c);
}

// An item runs lengths[b] steps; past them it writes zero outputs and its gradient passes through.
__device__ __forceinline__ bool is_active(const int* __restrict__ lengths, const int t, const int b) {
  return lengths == nullptr || t < lengths[b];
}

// Zoneout (Krueger et al. 2016): a unit keeps its previous value where the step's mask is set (training: one
// byte per unit, 1 with probability p), and takes the expectation p·prev + (1 − p)·next where there is no mask
// (evaluation).  prev[idx] is read only where it is used, so a state without zoneout may pass null for it (a
// projected LSTM's h, which is not H wide).  zone_grad splits the gradient of the result between prev and next.
template <typename P, typename C>
__device__ __forceinline__ C zone(const unsigned char* __restrict__ mask, const int idx, const C p,
                                  const P* __restrict__ prev, const C next) {
  if (mask != nullptr) return mask[idx] ? C(prev[idx]) : next;
  return p == C(0) ? next : p * C(prev[idx]) + (C(1) - p) * next;
}
// Variational recurrent dropout (Gal & Ghahramani 2016): the recurrent GEMMs read d∘h instead of h, d = mask / (1 − p)
// with one byte mask [B, H] per sequence (1 keeps the unit), so d's gradient factor is d again; no mask (evaluation,
// or no recurrent_dropout) is d = 1.  A product, not a select, so NaN in h or dh passes as through the reference.
template <typename C>
__device__ __forceinline__ C kept(const unsigned char* __restrict__ mask, const int idx, const C scale) {
  return mask == nullptr ? C(1) : C(mask[idx]) * scale;
}
template <typename C>
__device__ __forceinline__ void zone_grad(const unsigned char* __restrict__ mask, const int idx, const C p, const C d,
                                          C& d_prev, C& d_next) {
  if (mask != nullptr) {
    d_prev = mask[idx] ? d : C(0);
    d_next = mask[idx] ? C(0) : d;
  } else {
    d_prev = p == C(0) ? C(0) : p * d;
    d_next = p == C(0) ? d : (C(1) - p) * d;
  }
}
