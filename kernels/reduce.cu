// Deterministic column sums of a [rows, cols] matrix (the bias gradients), without atomics.
// CPU twin: rnncells/_numpy.py column_sum.
//   pass 1: partial[k, j] = Σ_{r in chunk k} a[r, j], rows in order
//   pass 2: out[j] = Σ_k partial[k, j], chunks in order
// Every sum runs in a fixed order, so every run gives the same bits.
#include "common.cuh"

// Block (x, y) sums chunks y, y + gridDim.y, ...: CUDA caps grid.y at 65,535, and T·B/chunk can pass it.
template <typename S, typename C>
__global__ void column_partial_sums(const int rows, const int cols, const int chunk,
                                    const S* __restrict__ a,    // [rows, cols]
                                    C* __restrict__ partial     // [chunks, cols]
) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const long long chunks = ((long long)rows + chunk - 1) / chunk;
  for (long long k = blockIdx.y; k < chunks; k += gridDim.y) {
    const long long end = (k + 1) * chunk < rows ? (k + 1) * chunk : rows;
    C sum = C(0);
    for (long long r = k * chunk; r < end; ++r) sum += C(a[r * cols + j]);
    partial[k * cols + j] = sum;
  }
}

template <typename S, typename C>
__global__ void column_totals(const int chunks, const int cols,
                              const C* __restrict__ partial,  // [chunks, cols]
                              S* __restrict__ out             // [cols]
) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  C sum = C(0);
  for (int k = 0; k < chunks; ++k) sum += partial[(long long)k * cols + j];
  out[j] = S(sum);
}
