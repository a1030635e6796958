// Persistent LSTM and GRU kernels: one cooperative launch runs all T steps of a layer, each block keeping its slice
// of W_hh in shared memory throughout (bench/NOTES.md, P6, has the design and its arithmetic).  CPU twin: the step
// loops of rnncells/_sequence.py over rnncells/_numpy.py, which run the same steps one launch at a time.
//
// Block k owns the units [k·U, k·U + n), n = min(U, H − k·U) (`units` U; the last slice may be partial), and all G
// gates of them (G = 4 LSTM, 3 GRU), so the pointwise update of its units needs nothing from other blocks.
// forward, step t = 0 … T−1:
//   hw[:, g·H + j] = h_in · W_hh[g·H + j, :]   for its G·n rows, B·G·n dot products of length H
//   *_forward_unit for its B·n units (the step kernels' own device functions), then grid_sync(): y[t] is whole.
//   h_in = h_{t−1} (h0, then y[t − 1]); under recurrent dropout d∘h_{t−1}, hd[t % 2] [B, H], which the units of
//   step t − 1 wrote: each step writes the other half, so no block overwrites what another still reads.
// backward, step t = T−1 … 0:
//   drec[(t+1) % 2][:, j] = d[t + 1] · W_hh[:, j]   for its n units, B·n dot products of length G·H (d = da, or
//   the GRU's dgh; the caller zeroes drec[T % 2]), then *_backward_unit, then grid_sync(); after step 0 the same
//   product of d[0] gives drec[0], dh0's GEMM part, as the step loops' last GEMM does.
// Shared memory (dynamic; rnncells/_kernels.py's persistent_shared_bytes):
//   w        [G·n, H] rows of W_hh (forward), or [n, G·H] its columns, transposed (backward), in S
//   partial  [blockDim.x] C, the split dot products' partial sums, from the first 16-byte boundary after w
// A block has B·G·n (or B·n) dot products; when that is fewer than its threads, `split` threads share each, every
// one summing each split-th term, and the first adds their partial sums in order.  Every sum runs in a fixed order,
// so every run gives the same bits.
#pragma once
#include "gru.cu"
#include "lstm.cu"

#ifdef __CUDACC__
// Every thread of the grid waits here until all have arrived (host.h has the host's).  Every block must be resident:
// the launch is cooperative, which guarantees it or is refused.  A sense-reversing counter, the algorithm of
// cooperative groups' grid sync, written out because cooperative_groups.h needs CCCL headers that NVRTC lacks
// without a CUDA toolkit: block 0 adds 2^31 − (blocks − 1), every other block 1, so the top bit of *barrier flips
// once every block has arrived, and its low bits come back to where they were (0: the launcher zeroes it).
__device__ __forceinline__ void grid_sync(unsigned int* barrier) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
    __threadfence();  // this block's writes are visible before its arrival is
    const unsigned int old = atomicAdd(barrier, add);
    while (((old ^ *(volatile unsigned int*)barrier) & 0x80000000u) == 0) {
    }
    __threadfence();  // and the other blocks' writes before anything after the barrier
  }
  __syncthreads();
}

__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return shared_bytes;
}
#endif

// The units this block owns, [j0, j0 + n): `units` each but the last block's, which may have fewer.
__device__ __forceinline__ void block_slice(const int units, const int H, int& j0, int& n) {
  j0 = blockIdx.x * units;
  n = min(units, H - j0);
}

// The block's partial sums, after its weights: [G·n·K] S rounded up to 16 bytes.
template <typename S, typename C>
__device__ __forceinline__ C* partial_sums(const int weights) {
  const int offset = (weights * int(sizeof(S)) + 15) / 16 * 16;
  return reinterpret_cast<C*>(dynamic_shared_memory() + offset);
}

// store(i, r, Σ_k a[i, k] · w[r, k]) for every row i < n_a of a [n_a, K] and r < n_w of w [n_w, K].  Called by
// every thread of the block (it meets at __syncthreads() when the products are split).
template <typename S, typename C, typename Store>
__device__ __forceinline__ void block_dots(const S* __restrict__ a, const int n_a, const S* __restrict__ w,
                                           const int n_w, const int K, C* __restrict__ partial, Store store) {
  const int n_out = n_a * n_w, threads = blockDim.x;
  const int split = n_out >= threads ? 1 : threads / n_out, part = threadIdx.x % split;
  for (int base = 0; base < n_out; base += threads / split) {  // the same rounds for every thread
    const int o = base + threadIdx.x / split, i = o / n_w, r = o % n_w;
    C sum = C(0);
    if (o < n_out) {
      const S* __restrict__ a_row = a + (long long)i * K;
      const S* __restrict__ w_row = w + (long long)r * K;
      for (int k = part; k < K; k += split) sum += C(a_row[k]) * C(w_row[k]);
    }
    if (split == 1) {
      if (o < n_out) store(i, r, sum);
      continue;
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (part == 0 && o < n_out) {
      C total = C(0);
      for (int p = 0; p < split; ++p) total += partial[threadIdx.x + p];
      store(i, r, total);
    }
    __syncthreads();  // every total is read before the next round writes partial again
  }
}

// The forward's loop over T steps for a cell of G gates: unit(t, b, j) is the cell's pointwise step of unit (b, j).
template <int G, typename S, typename C, typename Unit>
__device__ __forceinline__ void persistent_forward(const int T, const int B, const int H, const int units,
                                                   const S* __restrict__ w_hh,  // [G·H, H]
                                                   const S* __restrict__ h0,    // [B, H]
                                                   const S* __restrict__ y,     // [T, B, H]
                                                   const S* __restrict__ hd,    // [2, B, H] d∘h, or null
                                                   C* __restrict__ hw,          // [B, G·H] h_in W_hhᵀ
                                                   unsigned int* barrier, Unit unit) {
  int j0, n;
  block_slice(units, H, j0, n);
  S* w = reinterpret_cast<S*>(dynamic_shared_memory());
  C* partial = partial_sums<S, C>(G * n * H);
  for (int idx = threadIdx.x; idx < G * n * H; idx += blockDim.x) {  // w[g·n + jl, k] = W_hh[g·H + j0 + jl, k]
    const int r = idx / H, k = idx % H;
    w[idx] = w_hh[(long long)((r / n) * H + j0 + r % n) * H + k];
  }
  __syncthreads();
  for (int t = 0; t < T; ++t) {
    const S* h_in = hd != nullptr ? hd + (t % 2) * B * H : (t == 0 ? h0 : y + (long long)(t - 1) * B * H);
    block_dots(h_in, B, w, G * n, H, partial,
               [&](const int b, const int r, const C v) { hw[b * G * H + (r / n) * H + j0 + r % n] = v; });
    __syncthreads();  // hw's columns of this block are whole
    for (int p = threadIdx.x; p < B * n; p += blockDim.x) unit(t, p / n, j0 + p % n);
    grid_sync(barrier);  // y[t] (and d∘y[t]) are whole for step t + 1
  }
}

// The backward's loop over steps T−1 … 0 for a cell of G gates: unit(t, b, j) is the cell's pointwise backward of
// unit (b, j), reading drec[(t + 1) % 2]; d is what the recurrent GEMM multiplies, [T, B, G·H].
template <int G, typename S, typename C, typename Unit>
__device__ __forceinline__ void persistent_backward(const int T, const int B, const int H, const int units,
                                                    const S* __restrict__ w_hh,  // [G·H, H]
                                                    const S* __restrict__ d,     // [T, B, G·H]
                                                    C* __restrict__ drec,        // [2, B, H] d W_hh, ping-pong
                                                    unsigned int* barrier, Unit unit) {
  const int GH = G * H;
  int j0, n;
  block_slice(units, H, j0, n);
  S* w = reinterpret_cast<S*>(dynamic_shared_memory());
  C* partial = partial_sums<S, C>(n * GH);
  for (int idx = threadIdx.x; idx < n * GH; idx += blockDim.x) {  // w[jl, k] = W_hh[k, j0 + jl]
    const int jl = idx / GH, k = idx % GH;
    w[idx] = w_hh[(long long)k * H + j0 + jl];
  }
  __syncthreads();
  auto product = [&](const int t, C* out) {  // out[:, j0 + jl] = d[t] W_hh[:, j0 + jl]
    block_dots(d + (long long)t * B * GH, B, w, n, GH, partial,
               [&](const int b, const int jl, const C v) { out[b * H + j0 + jl] = v; });
    __syncthreads();
  };
  for (int t = T - 1; t >= 0; --t) {
    if (t + 1 < T) product(t + 1, drec + ((t + 1) % 2) * B * H);
    for (int p = threadIdx.x; p < B * n; p += blockDim.x) unit(t, p / n, j0 + p % n);
    grid_sync(barrier);  // d[t] is whole for the product of step t − 1
  }
  if (T > 0) product(0, drec);
}

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
__global__ void lstm_persistent_forward(const int T, const int B, const int H, const int units, const C cell_clip,
                                        const C zoneout_h, const C zoneout_c, const C rdrop_scale,
                                        const S* __restrict__ xw,        // [T, B, 4H] x Wihᵀ + biases
                                        const S* __restrict__ w_hh,      // [4H, H]
                                        const S* __restrict__ h0,        // [B, H]
                                        const C* __restrict__ c0,        // [B, H]
                                        C* __restrict__ cs,              // [T, B, H] c after each step (inference:
                                                                         //  [2, B, H], ping-pong)
                                        S* __restrict__ y,               // [T, B, H]
                                        S* __restrict__ h_last,          // [B, H], or null
                                        S* __restrict__ gates,           // [T, B, 4H] when TRAINING
                                        const S* __restrict__ w_peep,    // [3H] when DIAGONAL
                                        const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                        const unsigned char* __restrict__ zone_c,  // [T, B, H], or null
                                        const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                        S* __restrict__ hd,              // [2, B, H] d∘h (with rdrop; hd[0] = d∘h0)
                                        const int* __restrict__ lengths, // [B], or null
                                        C* __restrict__ hw,              // [B, 4H] scratch
                                        unsigned int* barrier            // [1] the grid barrier's counter, zeroed
) {
  const long long BH = (long long)B * H;
  auto unit = [&](const int t, const int b, const int j) {
    const int s = TRAINING ? t : t % 2;
    lstm_forward_unit<S, C, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>(
        t, b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, xw + t * 4 * BH, hw, nullptr,
        t == 0 ? h0 : y + (t - 1) * BH, t == 0 ? c0 : cs + (TRAINING ? t - 1 : (t + 1) % 2) * BH, cs + s * BH,
        y + t * BH, h_last, TRAINING ? gates + t * 4 * BH : nullptr, w_peep,
        zone_h == nullptr ? nullptr : zone_h + t * BH, zone_c == nullptr ? nullptr : zone_c + t * BH, rdrop,
        hd == nullptr ? nullptr : hd + ((t + 1) % 2) * BH, lengths);
  };
  persistent_forward<4>(T, B, H, units, w_hh, h0, y, rdrop == nullptr ? nullptr : hd, hw, barrier, unit);
}

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
__global__ void lstm_persistent_backward(const int T, const int B, const int H, const int units, const C cell_clip,
                                         const C zoneout_h, const C zoneout_c, const C rdrop_scale,
                                         const S* __restrict__ gates,     // [T, B, 4H] i f g o
                                         const C* __restrict__ c0,        // [B, H]
                                         const C* __restrict__ cs,        // [T, B, H]
                                         const S* __restrict__ dy,        // [T, B, H]
                                         C* __restrict__ dcarry,          // [2, B, 2H] d[h | c], ping-pong
                                         C* __restrict__ drec,            // [2, B, H] da W_hh, ping-pong
                                         S* __restrict__ da,              // [T, B, 4H]
                                         const S* __restrict__ w_hh,      // [4H, H]
                                         const S* __restrict__ w_peep,    // [3H] when DIAGONAL
                                         const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                         const unsigned char* __restrict__ zone_c,  // [T, B, H], or null
                                         const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                         const int* __restrict__ lengths, // [B], or null
                                         unsigned int* barrier            // [1] zeroed
) {
  const long long BH = (long long)B * H;
  auto unit = [&](const int t, const int b, const int j) {
    const int nxt = (t + 1) % 2, cur = t % 2;
    lstm_backward_unit<S, C, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT>(
        t, b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, H, gates + t * 4 * BH,
        t == 0 ? c0 : cs + (t - 1) * BH, cs + t * BH, dy + t * BH, dcarry + nxt * 2 * BH, drec + nxt * BH,
        dcarry + cur * 2 * BH, da + t * 4 * BH, w_peep, zone_h == nullptr ? nullptr : zone_h + t * BH,
        zone_c == nullptr ? nullptr : zone_c + t * BH, rdrop, lengths);
  };
  persistent_backward<4>(T, B, H, units, w_hh, da, drec, barrier, unit);
}

template <typename S, typename C, bool ZONEOUT, bool TRAINING>
__global__ void gru_persistent_forward(const int T, const int B, const int H, const int units, const C zoneout_h,
                                       const C rdrop_scale,
                                       const S* __restrict__ xw,        // [T, B, 3H] x Wihᵀ + b_ih + [b_hr, b_hz, 0]
                                       const S* __restrict__ w_hh,      // [3H, H]
                                       const S* __restrict__ b_hn,      // [H]
                                       const S* __restrict__ h0,        // [B, H]
                                       S* __restrict__ y,               // [T, B, H]
                                       S* __restrict__ h_last,          // [B, H], or null
                                       S* __restrict__ gates,           // [T, B, 4H] when TRAINING
                                       const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                       const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                       S* __restrict__ hd,              // [2, B, H] d∘h (with rdrop; hd[0] = d∘h0)
                                       const int* __restrict__ lengths, // [B], or null
                                       C* __restrict__ gh,              // [B, 3H] scratch
                                       unsigned int* barrier            // [1] zeroed
) {
  const long long BH = (long long)B * H;
  auto unit = [&](const int t, const int b, const int j) {
    gru_forward_unit<S, C, ZONEOUT, TRAINING>(t, b, j, H, zoneout_h, rdrop_scale, xw + t * 3 * BH, gh, b_hn,
                                              t == 0 ? h0 : y + (t - 1) * BH, y + t * BH, h_last,
                                              TRAINING ? gates + t * 4 * BH : nullptr,
                                              zone_h == nullptr ? nullptr : zone_h + t * BH, rdrop,
                                              hd == nullptr ? nullptr : hd + ((t + 1) % 2) * BH, lengths);
  };
  persistent_forward<3>(T, B, H, units, w_hh, h0, y, rdrop == nullptr ? nullptr : hd, gh, barrier, unit);
}

template <typename S, typename C, bool ZONEOUT>
__global__ void gru_persistent_backward(const int T, const int B, const int H, const int units, const C zoneout_h,
                                        const C rdrop_scale,
                                        const S* __restrict__ gates,     // [T, B, 4H] r z n (gh_n + b_hn)
                                        const S* __restrict__ h0,        // [B, H]
                                        const S* __restrict__ y,         // [T, B, H]
                                        const S* __restrict__ dy,        // [T, B, H]
                                        C* __restrict__ dcarry,          // [2, B, H] dh, ping-pong
                                        C* __restrict__ drec,            // [2, B, H] dgh W_hh, ping-pong
                                        S* __restrict__ dgi,             // [T, B, 3H]
                                        S* __restrict__ dgh,             // [T, B, 3H]
                                        const S* __restrict__ w_hh,      // [3H, H]
                                        const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                        const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                        const int* __restrict__ lengths, // [B], or null
                                        unsigned int* barrier            // [1] zeroed
) {
  const long long BH = (long long)B * H;
  auto unit = [&](const int t, const int b, const int j) {
    const int nxt = (t + 1) % 2, cur = t % 2;
    gru_backward_unit<S, C, ZONEOUT>(t, b, j, H, zoneout_h, rdrop_scale, gates + t * 4 * BH,
                                     t == 0 ? h0 : y + (t - 1) * BH, dy + t * BH, dcarry + nxt * BH,
                                     drec + nxt * BH, dcarry + cur * BH, dgi + t * 3 * BH, dgh + t * 3 * BH,
                                     zone_h == nullptr ? nullptr : zone_h + t * BH, rdrop, lengths);
  };
  persistent_backward<3>(T, B, H, units, w_hh, dgh, drec, barrier, unit);
}
