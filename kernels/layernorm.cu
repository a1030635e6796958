// Layer normalisation of rows (Ba et al. 2016), for layer_norm=True; CPU twin: rnncells/_numpy.py (layer_norm_*).
// layer_norm normalises each row of a GEMM's output, x Wihᵀ [T·B, G·H] once and h Whhᵀ [B, G·H] every step, before
// the cell's kernel reads it; the LayerNorm LSTM's cell kernels (lstm.cu) normalise c' with the device functions
// below (block_sum, block_rstd, layer_norm_input_grad).
//   forward   μ = Σ_k x_k / n    σ² = Σ_k (x_k − μ)² / n    x̂ = (x − μ) / √(σ² + ε)    x ← γ∘x̂ (+ β)
//   backward  dx̂ = γ∘dy          dx = (dx̂ − mean(dx̂) − x̂∘mean(dx̂∘x̂)) / √(σ² + ε)
// σ² takes a second pass over the row (its deviations from μ), not E[x²] − μ², which cancels when |μ| ≫ σ.
// One block per row: its threads stride over the row's n values and meet in a tree sum over shared memory, so
// these kernels and lstm.cu's lstm_ln_*_step, unlike the others, need __syncthreads() (the host runs them with
// host.h's launch_blocks).
// Every sum runs in a fixed order, so every run gives the same bits.
#pragma once
#include "common.cuh"

constexpr int LN_THREADS = 256;  // the most threads per block; blockDim.x is a power of 2, at most this

// Σ of every thread's v, returned to each: a tree over shared[blockDim.x], halving the active threads each round.
template <typename C>
__device__ __forceinline__ C block_sum(const C v, C* shared) {
  const int tid = threadIdx.x;
  shared[tid] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (tid < s) shared[tid] += shared[tid + s];
    __syncthreads();
  }
  const C sum = shared[0];
  __syncthreads();  // every thread has read the sum before the next block_sum writes shared again
  return sum;
}

// 1/√(σ² + ε) of a block's row x[0, n) with mean μ: σ² from a second pass over the deviations, never E[x²] − μ².
template <typename C>
__device__ __forceinline__ C block_rstd(const C* __restrict__ x, const int n, const C mean, const C eps, C* shared) {
  C sq = C(0);
  for (int k = threadIdx.x; k < n; k += blockDim.x) sq += (x[k] - mean) * (x[k] - mean);
  return C(1) / sqrt(block_sum(sq, shared) / C(n) + eps);
}

// One value's dx from its dx̂ = γ∘dy and x̂, given the row's mean(dx̂), mean(dx̂∘x̂) and 1/√(σ² + ε).
template <typename C>
__device__ __forceinline__ C layer_norm_input_grad(const C d_hat, const C x_hat, const C mean_d, const C mean_dx,
                                                   const C rstd) {
  return rstd * (d_hat - mean_d - x_hat * mean_dx);
}

template <typename S, typename C>
__global__ void layer_norm_forward(const int n, const C eps,
                                   C* __restrict__ x,            // [rows, n] a GEMM's output; becomes γ∘x̂ (+ β)
                                   const S* __restrict__ gamma,  // [n] the gain
                                   const C* __restrict__ beta,   // [n] the shift (the biases), or null
                                   S* __restrict__ x_hat,        // [rows, n] x̂, kept for the backward, or null
                                   C* __restrict__ rstd          // [rows] 1/√(σ² + ε), kept with x̂, or null
) {
  __shared__ C shared[LN_THREADS];
  const long long row = blockIdx.x;
  C* xr = x + row * n;
  C sum = C(0);
  for (int k = threadIdx.x; k < n; k += blockDim.x) sum += xr[k];
  const C mean = block_sum(sum, shared) / C(n);
  const C r = block_rstd(xr, n, mean, eps, shared);
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const C xh = (xr[k] - mean) * r;
    if (x_hat != nullptr) x_hat[row * n + k] = S(xh);
    xr[k] = C(gamma[k]) * xh + (beta != nullptr ? beta[k] : C(0));
  }
  if (rstd != nullptr && threadIdx.x == 0) rstd[row] = r;
}

template <typename S, typename C>
__global__ void layer_norm_backward(const int n,
                                    const S* __restrict__ dy,     // [rows, n] the gradient of γ∘x̂ (+ β)
                                    const S* __restrict__ x_hat,  // [rows, n]
                                    const C* __restrict__ rstd,   // [rows]
                                    const S* __restrict__ gamma,  // [n]
                                    S* __restrict__ dx            // [rows, n] the gradient of x
) {
  __shared__ C shared[LN_THREADS];
  const long long row = blockIdx.x, first = row * n;
  C sum_d = C(0), sum_dx = C(0);
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const C d_hat = C(gamma[k]) * C(dy[first + k]);
    sum_d += d_hat;
    sum_dx += d_hat * C(x_hat[first + k]);
  }
  const C mean_d = block_sum(sum_d, shared) / C(n), mean_dx = block_sum(sum_dx, shared) / C(n);
  const C r = rstd[row];
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const C d_hat = C(gamma[k]) * C(dy[first + k]);
    dx[first + k] = S(layer_norm_input_grad(d_hat, C(x_hat[first + k]), mean_d, mean_dx, r));
  }
}
