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
//   peephole="full" also: cw[:, g·H + j] = c_{t−1} · W_ch[g·H + j, :] for its 3·n rows (i, f, o).
// backward, step t = T−1 … 0:
//   drec[(t+1) % 2][:, j] = d[t + 1] · W_hh[:, j]   for its n units, B·n dot products of length G·H (d = da, or
//   the GRU's dgh; the caller zeroes drec[T % 2]), then *_backward_unit, then grid_sync(); after step 0 the same
//   product of d[0] gives drec[0], dh0's GEMM part, as the step loops' last GEMM does.  peephole="full": d against
//   [W_hh | W_ch] (the step loops' w_rec [4H, 2H]), columns j and H + j, drec [2, B, 2H] (dh's part, then dc's).
// proj_size P (the LSTM's h = W_hr h'; P a runtime argument, as for the step kernels): block k also owns the outputs
// [k·V, k·V + m) (`proj_units` V; trailing blocks may own none), h is P wide, and each step meets the grid twice:
//   forward   hw from h_{t−1} [B, P]; the units write h' [B, H]; grid_sync(); y[t][:, p] = h' · W_hr[p, :] for its
//             m outputs; grid_sync()
//   backward  dh[t][:, p] += da[t + 1] · W_hh[:, p] for its m outputs (dh [T, B, P] the caller's dy, lengths applied
//             and dhT added); grid_sync(); drec[(t+1) % 2][:, j] = dh[t] · W_hr[:, j] for its units (FULL: and
//             [:, H + j] = da[t + 1] · W_ch's column j); the units; grid_sync()
// layer_norm: a row's statistics span every block; each block writes its part, and after a grid barrier every block
// combines all parts in block order (normalise_rows; the LayerNorm LSTM's kernels below).
// Shared memory (dynamic; rnncells/_kernels.py's persistent_shared_bytes), each part from a 16-byte boundary:
//   w        [G·n, H + 1] rows of W_hh (forward), or [n, G·H + 1] its columns, transposed ([2n, G·H + 1] when
//            FULL: backward), in S; each row one longer than its values (ROW_PAD), against bank conflicts;
//            projected: [4n, P + 1] rows (forward), [m, 4H + 1] columns (backward)
//   x        projected: [m, H + 1] rows of W_hr (forward), or [n, 4H + 1] columns of W_ch (backward, FULL), in S
//   c        [3·n, H + 1] rows of W_ch in C (forward, FULL); projected backward: [n, P + 1] columns of W_hr in C
//   partial  [blockDim.x] C, the split dot products' partial sums
// No pointer the launch writes through may be read through one that could also be a `const __restrict__` parameter:
// NVVM then reads it with ld.global.nc, through the read-only data cache, which is not coherent with the launch's
// writes, and a later step would read a stale state.  So h0 and c0, which the loops choose between and y, d∘h or c
// at each step, are not `__restrict__` here (tests/test_persistent.py checks every kernel's PTX for such reads);
// nor, in the loops below, are the buffers that their units also write through the kernel's own pointers.
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

// The units this block owns, [j0, j0 + n): `units` each but the last block's, which may have fewer (or none: the
// projection's outputs, P of them over blocks made for H).
__device__ __forceinline__ void block_slice(const int units, const int H, int& j0, int& n) {
  j0 = blockIdx.x * units;
  n = max(0, min(units, H - j0));
}

// The block's r-th column of a row of G·H (gate r / n, unit j0 + r % n), r < G·n: where the block's rows of a
// weight come from, and where its values of a row of gates go.
__device__ __forceinline__ int block_column(const int r, const int n, const int H, const int j0) {
  return (r / n) * H + j0 + r % n;
}

// The block's shared memory, in order, each part from a 16-byte boundary: its weights in S (n_w values), more in S
// (n_x: the projection's), more in C (n_c: the full peephole's, or the projection's in the backward), the partial
// sums, one per thread in C.
template <typename S, typename C>
struct Shared {
  S* w;
  S* x;
  C* c;
  C* partial;
};
template <typename S, typename C>
__device__ __forceinline__ Shared<S, C> shared_parts(const int n_w, const int n_x, const int n_c) {
  auto part = [](const int bytes) { return (bytes + 15) / 16 * 16; };
  const int x = part(n_w * int(sizeof(S))), c = x + part(n_x * int(sizeof(S)));
  const int partial = c + part(n_c * int(sizeof(C)));
  unsigned char* base = dynamic_shared_memory();
  return {reinterpret_cast<S*>(base), reinterpret_cast<S*>(base + x), reinterpret_cast<C*>(base + c),
          reinterpret_cast<C*>(base + partial)};
}

// Rows of weights in shared memory are K + ROW_PAD long: with rows of a multiple of 32 words, the threads of a warp
// reading the same k of different rows would all hit one bank.
constexpr int ROW_PAD = 1;

// store(i, r, Σ_k a[i, k] · w[r, k]) for k < K, every row i < n_a of a (rows lda apart) and r < n_w of w (shared,
// rows ldw apart).  Called by every thread of the block (it meets at __syncthreads() when the products are split).
template <typename A, typename W, typename C, typename Store>
__device__ __forceinline__ void block_dots(const A* __restrict__ a, const int lda, const int n_a,
                                           const W* __restrict__ w, const int ldw, const int n_w, const int K,
                                           C* __restrict__ partial, Store store) {
  const int n_out = n_a * n_w, threads = blockDim.x;
  if (n_out == 0) return;  // a block without projected outputs
  const int split = n_out >= threads ? 1 : threads / n_out, part = threadIdx.x % split;
  for (int base = 0; base < n_out; base += threads / split) {  // the same rounds for every thread
    const int o = base + threadIdx.x / split, i = o / n_w, r = o % n_w;
    C sum = C(0);
    if (o < n_out) {
      const A* __restrict__ a_row = a + (long long)i * lda;
      const W* __restrict__ w_row = w + (long long)r * ldw;
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

// rows[g·n + jl, k] = W[g·H + j0 + jl, k] for g < gates, jl < n, k < K: a block's rows of a [gates·H, K] weight,
// rows [gates·n, K + ROW_PAD].
template <typename T>
__device__ __forceinline__ void load_rows(T* __restrict__ rows, const T* __restrict__ W, const int gates,
                                          const int j0, const int n, const int H, const int K) {
  for (int idx = threadIdx.x; idx < gates * n * K; idx += blockDim.x) {
    const int r = idx / K, k = idx % K;
    rows[r * (K + ROW_PAD) + k] = W[(long long)block_column(r, n, H, j0) * K + k];
  }
}

// cols[c, k] = W[k, (c / n)·H + j0 + c % n] for c < parts·n, k < K: a block's columns of a [K, n_rec] weight, the
// units' own in each of its `parts` blocks of H columns, transposed, cols [parts·n, K + ROW_PAD].
template <typename T>
__device__ __forceinline__ void load_columns(T* __restrict__ cols, const T* __restrict__ W, const int K,
                                             const int n_rec, const int parts, const int j0, const int n,
                                             const int H) {
  for (int idx = threadIdx.x; idx < parts * n * K; idx += blockDim.x) {
    const int c = idx / K, k = idx % K;
    cols[c * (K + ROW_PAD) + k] = W[(long long)k * n_rec + block_column(c, n, H, j0)];
  }
}

// f(b, j) for each of the block's B·n units (b, j0 + jl), its threads striding over them.
template <typename F>
__device__ __forceinline__ void for_each_unit(const int B, const int j0, const int n, F f) {
  for (int p = threadIdx.x; p < B * n; p += blockDim.x) f(p / n, j0 + p % n);
}

// persistent_forward's c_in or m_out where the cell has no full peephole or no projection: no buffer.
template <typename T>
__device__ __forceinline__ auto no_buffer() {
  return [](const int) { return static_cast<const T*>(nullptr); };
}

// A step loop's pointwise phase that is unit(t, b, j) for each of the block's units.
template <typename Unit>
__device__ __forceinline__ auto each_unit(const int B, Unit unit) {
  return [=](const int t, const int j0, const int n) {
    for_each_unit(B, j0, n, [&](const int b, const int j) { unit(t, b, j); });
  };
}

// --- layer_norm: a row's statistics over every block ---------------------------------------------------------------
// A row b of h W_hhᵀ [B, G·H] (or of c' [B, H]) spans every block.  Each block writes what its own values of the row
// contribute to parts [blocks, B, 2]; after a grid barrier every block combines all blocks' parts in block order, so
// every block gets the same bits, and every run.  A block's LayerNorm work is per row (a thread each: for_each_row),
// on its few units of the row.

// f(b) for each row b < B, a thread each; the same thread takes row b in every call.
template <typename F>
__device__ __forceinline__ void for_each_row(const int B, F f) {
  for (int b = threadIdx.x; b < B; b += blockDim.x) f(b);
}

// part = {mean, M2 = Σ(x − mean)²} of x(0) … x(n − 1), in two passes (never Σx² − n·mean², which cancels).
template <typename C, typename X>
__device__ __forceinline__ void moments_part(const int n, X x, C* part) {
  C sum = C(0);
  for (int k = 0; k < n; ++k) sum += x(k);
  const C mean = sum / C(n);
  C m2 = C(0);
  for (int k = 0; k < n; ++k) m2 += (x(k) - mean) * (x(k) - mean);
  part[0] = mean;
  part[1] = m2;
}

// Row b's mean and 1/√(σ² + ε) from every block's moments_part, block k's over per_unit values of each of its
// units: Chan et al.'s pairwise update (M2 = M2_a + M2_b + δ²·n_a·n_b / n), in block order.
template <typename C>
__device__ __forceinline__ void merged_moments(const C* __restrict__ parts, const int b, const int B,
                                               const int per_unit, const int units, const int H, const C eps,
                                               C& mean, C& rstd) {
  C n_a = C(0), mean_a = C(0), m2_a = C(0);
  for (int k = 0; k < int(gridDim.x); ++k) {
    const C n_b = C(per_unit * min(units, H - k * units)), n = n_a + n_b;  // every block owns a unit
    const C delta = parts[(k * B + b) * 2] - mean_a;
    mean_a += delta * (n_b / n);
    m2_a += parts[(k * B + b) * 2 + 1] + delta * delta * (n_a * n_b / n);
    n_a = n;
  }
  mean = mean_a;
  rstd = C(1) / sqrt(m2_a / n_a + eps);
}

// Row b's two sums from every block's part, in block order.
template <typename C>
__device__ __forceinline__ void merged_sums(const C* __restrict__ parts, const int b, const int B, C& s0, C& s1) {
  s0 = s1 = C(0);
  for (int k = 0; k < int(gridDim.x); ++k) {
    s0 += parts[(k * B + b) * 2];
    s1 += parts[(k * B + b) * 2 + 1];
  }
}

// layernorm.cu's layer_norm_forward of x [B, G·H] (h W_hhᵀ), for this block's G·n columns of each row: x ← γ∘x̂,
// x̂ kept in x_hat and 1/√(σ² + ε) in rstd (by block 0) where given.  One grid barrier; called by every thread.
template <typename S, typename C>
__device__ __forceinline__ void normalise_rows(const int B, const int H, const int G, const int units, const int j0,
                                               const int n, const C eps,
                                               C* __restrict__ x,              // [B, G·H]
                                               const S* __restrict__ gamma,    // [G·H]
                                               S* __restrict__ x_hat,          // [B, G·H], or null
                                               C* __restrict__ rstd,           // [B], or null
                                               C* __restrict__ parts,          // [blocks, B, 2]
                                               unsigned int* barrier) {
  __syncthreads();  // x's columns of this block are whole
  for_each_row(B, [&](const int b) {
    const C* row = x + b * G * H;
    moments_part(G * n, [&](const int r) { return row[block_column(r, n, H, j0)]; }, parts + (blockIdx.x * B + b) * 2);
  });
  grid_sync(barrier);  // every block's part of every row
  for_each_row(B, [&](const int b) {
    C mean, r;
    merged_moments(parts, b, B, G, units, H, eps, mean, r);
    for (int k = 0; k < G * n; ++k) {
      const int col = block_column(k, n, H, j0), i = b * G * H + col;
      const C xh = (x[i] - mean) * r;
      if (x_hat != nullptr) x_hat[i] = S(xh);
      x[i] = C(gamma[col]) * xh;
    }
    if (rstd != nullptr && blockIdx.x == 0) rstd[b] = r;
  });
  __syncthreads();  // x normalised for the block's units
}

// layernorm.cu's layer_norm_backward for this block's G·n columns of each row: dx = (dx̂ − mean(dx̂) −
// x̂∘mean(dx̂∘x̂))·r, dx̂ = γ∘dy, the means over the whole row.  One grid barrier; called by every thread.
template <typename S, typename C>
__device__ __forceinline__ void normalise_rows_backward(const int B, const int H, const int G, const int j0,
                                                        const int n,
                                                        const S* __restrict__ dy,     // [B, G·H]
                                                        const S* __restrict__ x_hat,  // [B, G·H]
                                                        const C* __restrict__ rstd,   // [B]
                                                        const S* __restrict__ gamma,  // [G·H]
                                                        S* __restrict__ dx,           // [B, G·H]
                                                        C* __restrict__ parts,        // [blocks, B, 2]
                                                        unsigned int* barrier) {
  __syncthreads();  // dy's columns of this block are whole
  for_each_row(B, [&](const int b) {
    C sum_d = C(0), sum_dx = C(0);
    for (int k = 0; k < G * n; ++k) {
      const int col = block_column(k, n, H, j0), i = b * G * H + col;
      const C d_hat = C(gamma[col]) * C(dy[i]);
      sum_d += d_hat;
      sum_dx += d_hat * C(x_hat[i]);
    }
    parts[(blockIdx.x * B + b) * 2] = sum_d;
    parts[(blockIdx.x * B + b) * 2 + 1] = sum_dx;
  });
  grid_sync(barrier);  // every block's sums of every row
  for_each_row(B, [&](const int b) {
    C sum_d, sum_dx;
    merged_sums(parts, b, B, sum_d, sum_dx);
    const C mean_d = sum_d / C(G * H), mean_dx = sum_dx / C(G * H);
    for (int k = 0; k < G * n; ++k) {
      const int col = block_column(k, n, H, j0), i = b * G * H + col;
      dx[i] = S(layer_norm_input_grad(C(gamma[col]) * C(dy[i]), C(x_hat[i]), mean_d, mean_dx, rstd[b]));
    }
  });
}

// The block's slice [j0, j0 + n) and its G·n rows of w [G·H, H] in shared memory, loaded: a forward's start.
template <typename S, typename C>
__device__ __forceinline__ Shared<S, C> own_rows(const S* __restrict__ w, const int G, const int units, const int H,
                                                 int& j0, int& n) {
  block_slice(units, H, j0, n);
  const Shared<S, C> sh = shared_parts<S, C>(G * n * (H + ROW_PAD), 0, 0);
  load_rows(sh.w, w, G, j0, n, H, H);
  __syncthreads();
  return sh;
}

// The block's slice [j0, j0 + n) and its columns j of w [GH, parts·H] (each of its parts' H), transposed, in shared
// memory, loaded: a backward's start.
template <typename S, typename C>
__device__ __forceinline__ Shared<S, C> own_columns(const S* __restrict__ w, const int GH, const int parts,
                                                    const int units, const int H, int& j0, int& n) {
  block_slice(units, H, j0, n);
  const Shared<S, C> sh = shared_parts<S, C>(parts * n * (GH + ROW_PAD), 0, 0);
  load_columns(sh.w, w, GH, parts * H, parts, j0, n, H);
  __syncthreads();
  return sh;
}

// The forward's loop over T steps for a cell of G gates: step(t, j0, n) is the cell's pointwise phase for the
// block's units [j0, j0 + n), called by every thread once hw's columns of the block are whole (each_unit for most
// cells; the LayerNorm cells normalise hw's rows first, across blocks).
// E = 3 (the LSTM's full peephole): c_in(t), the c before step t [B, H], against its rows of W_ch too, into cw.
// P > 0 (the LSTM's projection, h = W_hr h'): h is P wide, the units write h' into m_out(t) [B, H], and after a
// grid barrier the block's proj_units rows of W_hr give its columns of y[t]; a second grid barrier.
template <int G, int E, typename S, typename C, typename CIn, typename Step, typename MOut>
__device__ __forceinline__ void persistent_forward(const int T, const int B, const int H, const int P, const int units,
                                                   const int proj_units,
                                                   const S* __restrict__ w_hh,  // [G·H, P or H]
                                                   const C* __restrict__ w_ch,  // [E·H, H] (E > 0)
                                                   const S* __restrict__ w_hr,  // [P, H] (P > 0)
                                                   const S* h0,                 // [B, P or H]
                                                   S* y,                        // [T, B, P or H]
                                                   const S* hd,                 // [2, B, H] d∘h, or null
                                                   C* hw,                       // [B, G·H] h_in W_hhᵀ
                                                   C* cw,                       // [B, E·H] c W_chᵀ (E > 0)
                                                   unsigned int* barrier, CIn c_in, Step step, MOut m_out) {
  const int K = P > 0 ? P : H;  // h's width
  int j0, n, p0, m;
  block_slice(units, H, j0, n);
  block_slice(proj_units, P, p0, m);
  const Shared<S, C> sh = shared_parts<S, C>(G * n * (K + ROW_PAD), m * (H + ROW_PAD), E * n * (H + ROW_PAD));
  load_rows(sh.w, w_hh, G, j0, n, H, K);
  if constexpr (E > 0) load_rows(sh.c, w_ch, E, j0, n, H, H);
  if (P > 0) load_rows(sh.x, w_hr, 1, p0, m, P, H);
  __syncthreads();
  for (int t = 0; t < T; ++t) {
    const S* h_in = hd != nullptr ? hd + (t % 2) * B * H : (t == 0 ? h0 : y + (long long)(t - 1) * B * K);
    block_dots(h_in, K, B, sh.w, K + ROW_PAD, G * n, K, sh.partial,
               [&](const int b, const int r, const C v) { hw[b * G * H + block_column(r, n, H, j0)] = v; });
    if constexpr (E > 0)
      block_dots(c_in(t), H, B, sh.c, H + ROW_PAD, E * n, H, sh.partial,
                 [&](const int b, const int r, const C v) { cw[b * E * H + block_column(r, n, H, j0)] = v; });
    __syncthreads();  // hw's columns of this block are whole
    step(t, j0, n);
    grid_sync(barrier);  // y[t] (and d∘y[t], c[t]; projected: h') are whole
    if (P > 0) {
      S* y_t = y + (long long)t * B * P;
      block_dots(m_out(t), H, B, sh.x, H + ROW_PAD, m, H, sh.partial,
                 [&](const int b, const int r, const C v) { y_t[b * P + p0 + r] = S(v); });
      grid_sync(barrier);  // projected y[t] is whole for step t + 1, h' read before step t + 1 rewrites it (inference)
    }
  }
}

// The backward's loop over steps T−1 … 0 for a cell of G gates: step(t, j0, n) is the cell's pointwise backward for
// the block's units [j0, j0 + n), reading drec[(t + 1) % 2], called by every thread (each_unit for most cells; the
// LayerNorm cells' also normalise d[t]'s rows, across blocks); d is what the recurrent GEMM multiplies, [T, B, G·H],
// and w_rec its weights [G·H, n_rec]: W_hh (n_rec = H), or the LSTM's [W_hh | W_ch] with the full peephole
// (n_rec = 2H), whose columns j and H + j this block takes.
template <int G, typename S, typename C, typename Step>
__device__ __forceinline__ void persistent_backward(const int T, const int B, const int H, const int units,
                                                    const int n_rec,
                                                    const S* __restrict__ w_rec,  // [G·H, n_rec]
                                                    const S* d,                   // [T, B, G·H]
                                                    C* drec,                      // [2, B, n_rec] d w_rec, ping-pong
                                                    unsigned int* barrier, Step step) {
  const int GH = G * H, parts = n_rec / H;
  int j0, n;
  const Shared<S, C> sh = own_columns<S, C>(w_rec, GH, parts, units, H, j0, n);
  auto product = [&](const int t, C* out) {  // out[:, p·H + j0 + jl] = d[t] w_rec[:, p·H + j0 + jl]
    block_dots(d + (long long)t * B * GH, GH, B, sh.w, GH + ROW_PAD, parts * n, GH, sh.partial,
               [&](const int b, const int c, const C v) { out[b * n_rec + block_column(c, n, H, j0)] = v; });
    __syncthreads();
  };
  for (int t = T - 1; t >= 0; --t) {
    if (t + 1 < T) product(t + 1, drec + ((t + 1) % 2) * B * n_rec);
    step(t, j0, n);
    grid_sync(barrier);  // d[t] is whole for the product of step t − 1
  }
  if (T > 0) product(0, drec);
}

// The projected LSTM's backward loop (P > 0, h = W_hr h'), steps T−1 … 0: dh [B, P] = dy + da[t+1] W_hh, each
// block its proj_units columns; grid_sync(); dh' = dh W_hr for its units into drec[(t+1) % 2] (the full peephole's
// dc part too: da[t+1] against its columns of [W_ch], w_c); unit(t, b, j); grid_sync().  dh0 = da[0] W_hh is left
// to the caller (a GEMM), as in the step loops; the full peephole's dc part of step 0 is made here.
template <typename S, typename C, typename Unit>
__device__ __forceinline__ void persistent_projected_backward(const int T, const int B, const int H, const int P,
                                                              const int units, const int proj_units,
                                                              const S* __restrict__ w_hh,  // [4H, P]
                                                              const C* __restrict__ w_hr,  // [P, H]
                                                              const S* __restrict__ w_c,   // [4H, H] (FULL), or null
                                                              const S* da,                 // [T, B, 4H]
                                                              C* dhp,                      // [T, B, P] dy, made dh
                                                              const int n_rec,
                                                              C* drec,               // [2, B, n_rec] dh' (| dc part)
                                                              unsigned int* barrier, Unit unit) {
  const int GH = 4 * H;
  int j0, n, p0, m;
  block_slice(units, H, j0, n);
  block_slice(proj_units, P, p0, m);
  const Shared<S, C> sh = shared_parts<S, C>(m * (GH + ROW_PAD), w_c != nullptr ? n * (GH + ROW_PAD) : 0,
                                             n * (P + ROW_PAD));
  load_columns(sh.w, w_hh, GH, P, 1, p0, m, P);
  if (w_c != nullptr) load_columns(sh.x, w_c, GH, H, 1, j0, n, H);
  load_columns(sh.c, w_hr, P, H, 1, j0, n, H);
  __syncthreads();
  auto dc_part = [&](const int t, C* out) {  // out[:, H + j] = da[t] [W_ch][:, j]
    block_dots(da + (long long)t * B * GH, GH, B, sh.x, GH + ROW_PAD, n, GH, sh.partial,
               [&](const int b, const int c, const C v) { out[b * n_rec + H + j0 + c] = v; });
  };
  for (int t = T - 1; t >= 0; --t) {
    C* drec_t = drec + ((t + 1) % 2) * B * n_rec;
    C* dh = dhp + (long long)t * B * P;
    if (t + 1 < T) {
      block_dots(da + (long long)(t + 1) * B * GH, GH, B, sh.w, GH + ROW_PAD, m, GH, sh.partial,
                 [&](const int b, const int c, const C v) { dh[b * P + p0 + c] += v; });
      grid_sync(barrier);  // dh[t] is whole
      if (w_c != nullptr) dc_part(t + 1, drec_t);
    }
    block_dots(dh, P, B, sh.c, P + ROW_PAD, n, P, sh.partial,
               [&](const int b, const int c, const C v) { drec_t[b * n_rec + j0 + c] = v; });
    __syncthreads();
    for_each_unit(B, j0, n, [&](const int b, const int j) { unit(t, b, j); });
    grid_sync(barrier);  // da[t] is whole for the product of step t − 1
  }
  if (w_c != nullptr && T > 0) dc_part(0, drec);
}

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
__global__ void lstm_persistent_forward(const int T, const int B, const int H, const int P, const int units,
                                        const int proj_units, const C cell_clip,
                                        const C zoneout_h, const C zoneout_c, const C rdrop_scale,
                                        const S* __restrict__ xw,        // [T, B, 4H] x Wihᵀ + biases
                                        const S* __restrict__ w_hh,      // [4H, P or H]
                                        const C* __restrict__ w_ch,      // [3H, H] (i f o) when FULL
                                        const S* __restrict__ w_hr,      // [P, H] when P > 0
                                        const S* h0,                     // [B, P or H]
                                        const C* c0,                     // [B, H]
                                        C* __restrict__ cs,              // [T, B, H] c after each step (inference:
                                                                         //  [2, B, H], ping-pong)
                                        S* __restrict__ y,               // [T, B, P or H]
                                        S* __restrict__ ms,              // [T, B, H] h' when P > 0 ([1, B, H]
                                                                         //  inference)
                                        S* __restrict__ h_last,          // [B, H], or null
                                        S* __restrict__ gates,           // [T, B, 4H] when TRAINING
                                        const S* __restrict__ w_peep,    // [3H] when DIAGONAL
                                        const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                        const unsigned char* __restrict__ zone_c,  // [T, B, H], or null
                                        const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                        S* __restrict__ hd,              // [2, B, H] d∘h (with rdrop; hd[0] = d∘h0)
                                        const int* __restrict__ lengths, // [B], or null
                                        C* __restrict__ hw,              // [B, 4H] scratch
                                        C* __restrict__ cw,              // [B, 3H] scratch when FULL
                                        unsigned int* barrier            // [1] the grid barrier's counter, zeroed
) {
  const long long BH = (long long)B * H;
  auto c_in = [&](const int t) { return t == 0 ? c0 : cs + (TRAINING ? t - 1 : (t + 1) % 2) * BH; };
  auto m_out = [&](const int t) { return ms + (TRAINING ? t : 0) * BH; };
  auto unit = [&](const int t, const int b, const int j) {  // projected: h' into ms, and no zoneout of h
    lstm_forward_unit<S, C, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>(
        t, b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, xw + t * 4 * BH, hw, cw,
        P > 0 ? nullptr : t == 0 ? h0 : y + (t - 1) * BH, c_in(t), cs + (TRAINING ? t : t % 2) * BH,
        P > 0 ? m_out(t) : y + t * BH, h_last,
        TRAINING ? gates + t * 4 * BH : nullptr, w_peep, zone_h == nullptr ? nullptr : zone_h + t * BH,
        zone_c == nullptr ? nullptr : zone_c + t * BH, rdrop, hd == nullptr ? nullptr : hd + ((t + 1) % 2) * BH,
        lengths);
  };
  constexpr int E = PEEPHOLE == PEEPHOLE_FULL ? 3 : 0;  // W_ch's rows i, f, o
  persistent_forward<4, E>(T, B, H, P, units, proj_units, w_hh, w_ch, w_hr, h0, y, rdrop == nullptr ? nullptr : hd, hw,
                           cw, barrier, c_in, each_unit(B, unit), m_out);
}

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
__global__ void lstm_persistent_backward(const int T, const int B, const int H, const int P, const int units,
                                         const int proj_units, const C cell_clip,
                                         const C zoneout_h, const C zoneout_c, const C rdrop_scale,
                                         const S* __restrict__ gates,     // [T, B, 4H] i f g o
                                         const C* c0,                     // [B, H]
                                         const C* __restrict__ cs,        // [T, B, H]
                                         const S* __restrict__ dy,        // [T, B, H], or null when P > 0
                                         C* __restrict__ dcarry,          // [2, B, 2H] d[h | c], ping-pong
                                         const int n_rec,                 // H, or 2H when FULL
                                         C* __restrict__ drec,            // [2, B, n_rec] da w_rec, ping-pong
                                         S* __restrict__ da,              // [T, B, 4H]
                                         const S* __restrict__ w_rec,     // [4H, n_rec] W_hh, or [W_hh | W_ch] (FULL);
                                                                          //  P > 0: [4H, H] [W_ch] (FULL), or null
                                         const S* __restrict__ w_hh,      // [4H, P] when P > 0
                                         const C* __restrict__ w_hr,      // [P, H] when P > 0
                                         C* __restrict__ dhp,             // [T, B, P] when P > 0: dy (lengths
                                                                          //  applied, dhT added), made dh
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
        t, b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, n_rec, gates + t * 4 * BH,
        t == 0 ? c0 : cs + (t - 1) * BH, cs + t * BH, P > 0 ? nullptr : dy + t * BH, dcarry + nxt * 2 * BH,
        drec + nxt * B * n_rec, dcarry + cur * 2 * BH, da + t * 4 * BH, w_peep,
        zone_h == nullptr ? nullptr : zone_h + t * BH, zone_c == nullptr ? nullptr : zone_c + t * BH, rdrop, lengths);
  };
  if (P > 0)
    persistent_projected_backward(T, B, H, P, units, proj_units, w_hh, w_hr, w_rec, da, dhp, n_rec, drec, barrier,
                                  unit);
  else
    persistent_backward<4>(T, B, H, units, n_rec, w_rec, da, drec, barrier, each_unit(B, unit));
}

// The LayerNorm LSTM (layer_norm, no peephole): h W_hhᵀ normalised over its row's 4H values, and c' over its H before
// the output's tanh, each row's statistics over every block (normalise_rows, then moments_part and merged_moments
// for c').  forward, persistent_forward's loop, step t: hw = h_in W_hhᵀ for its 4·n rows; then its step: normalise_rows
// (grid_sync); each row's c' of its units parked in c_next, their moments; grid_sync; lstm_ln_forward_unit for its
// units, the row's statistics merged; then the loop's grid_sync.  Three grid barriers a step; parts [2, blocks, B, 2]:
// h W_hhᵀ's, then the c' ones (two, so that no block writes one before every block has read it).
template <typename S, typename C, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
__global__ void lstm_ln_persistent_forward(const int T, const int B, const int H, const int units, const C cell_clip,
                                           const C zoneout_h, const C zoneout_c, const C rdrop_scale, const C eps,
                                           const S* __restrict__ xw,        // [T, B, 4H] LN(x Wihᵀ)∘γ_x + biases
                                           const S* __restrict__ w_hh,      // [4H, H]
                                           const S* __restrict__ ln_h,      // [4H] h W_hhᵀ's gain
                                           const S* h0,                     // [B, H]
                                           const C* c0,                     // [B, H]
                                           C* __restrict__ cs,              // [T, B, H] ([2, B, H] inference)
                                           S* __restrict__ y,               // [T, B, H]
                                           S* __restrict__ h_last,          // [B, H], or null
                                           S* __restrict__ gates,           // [T, B, 4H] when TRAINING
                                           const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                           const unsigned char* __restrict__ zone_c,  // [T, B, H], or null
                                           const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                           S* __restrict__ hd,              // [2, B, H] d∘h (with rdrop)
                                           const int* __restrict__ lengths, // [B], or null
                                           const S* __restrict__ gamma_c,   // [H] c's gain
                                           const S* __restrict__ beta_c,    // [H] c's shift
                                           S* __restrict__ h_hat,           // [T, B, 4H] ĥ when TRAINING
                                           C* __restrict__ rstd_h,          // [T, B] when TRAINING
                                           S* __restrict__ c_hat,           // [T, B, H] ĉ when TRAINING
                                           C* __restrict__ rstd_c,          // [T, B] when TRAINING
                                           C* __restrict__ hw,              // [B, 4H] scratch
                                           C* __restrict__ parts,           // [2, blocks, B, 2] scratch
                                           unsigned int* barrier            // [1] zeroed
) {
  const long long BH = (long long)B * H;
  C* parts_c = parts + gridDim.x * B * 2;  // the c' statistics, apart from h W_hhᵀ's
  auto step = [&](const int t, const int j0, const int n) {
    const C* c_prev = t == 0 ? c0 : cs + (TRAINING ? t - 1 : (t + 1) % 2) * BH;
    C* c_next = cs + (TRAINING ? t : t % 2) * BH;
    const S* xw_t = xw + t * 4 * BH;
    normalise_rows<S, C>(B, H, 4, units, j0, n, eps, hw, ln_h, TRAINING ? h_hat + t * 4 * BH : nullptr,
                         TRAINING ? rstd_h + t * B : nullptr, parts, barrier);
    for_each_row(B, [&](const int b) {  // c' of the row's units parked in c_next (lstm_ln_forward_step's first pass)
      C* c1 = c_next + b * H + j0;
      for (int k = 0; k < n; ++k)
        c1[k] = lstm_unit<S, C, PEEPHOLE_NONE, SIGMOID_CANDIDATE, CLIP>(b, j0 + k, H, cell_clip, xw_t, hw, nullptr,
                                                                        c_prev[b * H + j0 + k], nullptr).c1;
      moments_part(n, [&](const int k) { return c1[k]; }, parts_c + (blockIdx.x * B + b) * 2);
    });
    grid_sync(barrier);  // every block's part of the c' statistics
    for_each_row(B, [&](const int b) {
      C mean, r;
      merged_moments(parts_c, b, B, 1, units, H, eps, mean, r);
      for (int j = j0; j < j0 + n; ++j)
        lstm_ln_forward_unit<S, C, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>(
            t, b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, mean, r, xw_t, hw,
            t == 0 ? h0 : y + (t - 1) * BH, c_prev, c_next, y + t * BH, h_last,
            TRAINING ? gates + t * 4 * BH : nullptr, zone_h == nullptr ? nullptr : zone_h + t * BH,
            zone_c == nullptr ? nullptr : zone_c + t * BH, rdrop, rdrop == nullptr ? nullptr : hd + ((t + 1) % 2) * BH,
            lengths, gamma_c, beta_c, TRAINING ? c_hat + t * BH : nullptr);
      if (TRAINING && blockIdx.x == 0) rstd_c[t * B + b] = r;
    });
  };
  persistent_forward<4, 0>(T, B, H, 0, units, 0, w_hh, static_cast<const C*>(nullptr), static_cast<const S*>(nullptr),
                           h0, y, rdrop == nullptr ? nullptr : hd, hw, static_cast<C*>(nullptr), barrier,
                           no_buffer<C>(), step, no_buffer<S>());
}

// backward, persistent_backward's loop, step t = T−1 … 0: drec[(t+1) % 2] from da_raw[t + 1] (the gradient of
// h W_hhᵀ before its normalisation) against its columns of W_hh; then its step: each row's dn of its units and their
// Σγ_c∘dn, Σγ_c∘dn∘ĉ; grid_sync; lstm_ln_backward_unit with the row's merged sums; normalise_rows_backward
// (grid_sync) of da[t] into da_raw[t]; then the loop's grid_sync.  Three grid barriers a step; after step 0, drec[0]
// from da_raw[0] (dh0's GEMM part).
template <typename S, typename C, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
__global__ void lstm_ln_persistent_backward(const int T, const int B, const int H, const int units, const C cell_clip,
                                            const C zoneout_h, const C zoneout_c, const C rdrop_scale,
                                            const S* __restrict__ gates,     // [T, B, 4H] i f g o
                                            const C* c0,                     // [B, H]
                                            const C* __restrict__ cs,        // [T, B, H]
                                            const S* __restrict__ dy,        // [T, B, H]
                                            C* __restrict__ dcarry,          // [2, B, 2H] d[h | c], ping-pong
                                            C* __restrict__ drec,            // [2, B, H] da_raw W_hh, ping-pong
                                            S* __restrict__ da,              // [T, B, 4H]
                                            S* __restrict__ da_raw,          // [T, B, 4H] before LN
                                            const S* __restrict__ w_hh,      // [4H, H]
                                            const S* __restrict__ ln_h,      // [4H]
                                            const S* __restrict__ h_hat,     // [T, B, 4H]
                                            const C* __restrict__ rstd_h,    // [T, B]
                                            const S* __restrict__ c_hat,     // [T, B, H]
                                            const C* __restrict__ rstd_c,    // [T, B]
                                            const S* __restrict__ gamma_c,   // [H]
                                            const S* __restrict__ beta_c,    // [H]
                                            S* __restrict__ dn,              // [T, B, H] d(γ_c∘ĉ + β_c)
                                            const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                            const unsigned char* __restrict__ zone_c,  // [T, B, H], or null
                                            const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                            const int* __restrict__ lengths, // [B], or null
                                            C* __restrict__ parts,           // [2, blocks, B, 2] scratch
                                            unsigned int* barrier            // [1] zeroed
) {
  const long long BH = (long long)B * H;
  C* parts_c = parts + gridDim.x * B * 2;  // dn's sums, apart from da's
  auto step = [&](const int t, const int j0, const int n) {
    const int nxt = (t + 1) % 2, cur = t % 2;
    const C* c_prev = t == 0 ? c0 : cs + (t - 1) * BH;
    const S *gates_t = gates + t * 4 * BH, *c_hat_t = c_hat + t * BH, *dy_t = dy + t * BH;
    const unsigned char* zone_h_t = zone_h == nullptr ? nullptr : zone_h + t * BH;
    const unsigned char* zone_c_t = zone_c == nullptr ? nullptr : zone_c + t * BH;
    for_each_row(B, [&](const int b) {  // dn and the row's sums (lstm_ln_backward_step's first pass)
      C sum_d = C(0), sum_dx = C(0);
      if (is_active(lengths, t, b))
        for (int j = j0; j < j0 + n; ++j) {
          C tn, dn_j;
          lstm_ln_unit_grad<S, C, CLIP, ZONEOUT>(b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, gates_t, c_prev,
                                                 cs + t * BH, dy_t, dcarry + nxt * 2 * BH, drec + nxt * BH, zone_h_t,
                                                 zone_c_t, rdrop, c_hat_t, gamma_c, beta_c, tn, dn_j);
          dn[t * BH + b * H + j] = S(dn_j);
          const C d_hat = C(gamma_c[j]) * dn_j;
          sum_d += d_hat;
          sum_dx += d_hat * C(c_hat_t[b * H + j]);
        }
      parts_c[(blockIdx.x * B + b) * 2] = sum_d;
      parts_c[(blockIdx.x * B + b) * 2 + 1] = sum_dx;
    });
    grid_sync(barrier);  // every block's part of the rows' sums
    for_each_row(B, [&](const int b) {
      if (!is_active(lengths, t, b)) {
        for (int j = j0; j < j0 + n; ++j)
          lstm_ln_pass_through(b, j, H, rdrop_scale, dcarry + nxt * 2 * BH, drec + nxt * BH, rdrop,
                               dcarry + cur * 2 * BH, da + t * 4 * BH, dn + t * BH);
        return;
      }
      C sum_d, sum_dx;
      merged_sums(parts_c, b, B, sum_d, sum_dx);
      for (int j = j0; j < j0 + n; ++j)
        lstm_ln_backward_unit<S, C, SIGMOID_CANDIDATE, CLIP, ZONEOUT>(
            b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, sum_d / C(H), sum_dx / C(H), rstd_c[t * B + b],
            gates_t, c_prev, cs + t * BH, dy_t, dcarry + nxt * 2 * BH, drec + nxt * BH, dcarry + cur * 2 * BH,
            da + t * 4 * BH, zone_h_t, zone_c_t, rdrop, c_hat_t, gamma_c, beta_c);
    });
    normalise_rows_backward<S, C>(B, H, 4, j0, n, da + t * 4 * BH, h_hat + t * 4 * BH, rstd_h + t * B, ln_h,
                                  da_raw + t * 4 * BH, parts, barrier);
  };
  persistent_backward<4>(T, B, H, units, H, w_hh, da_raw, drec, barrier, step);
}

template <typename S, typename C, bool ZONEOUT, bool TRAINING>
__global__ void gru_persistent_forward(const int T, const int B, const int H, const int units, const C zoneout_h,
                                       const C rdrop_scale,
                                       const S* __restrict__ xw,        // [T, B, 3H] x Wihᵀ + b_ih + [b_hr, b_hz, 0]
                                       const S* __restrict__ w_hh,      // [3H, H]
                                       const S* __restrict__ b_hn,      // [H]
                                       const S* h0,                     // [B, H]
                                       S* __restrict__ y,               // [T, B, H]
                                       S* __restrict__ h_last,          // [B, H], or null
                                       S* __restrict__ gates,           // [T, B, 4H] when TRAINING
                                       const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                       const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                       S* __restrict__ hd,              // [2, B, H] d∘h (with rdrop; hd[0] = d∘h0)
                                       const int* __restrict__ lengths, // [B], or null
                                       C* __restrict__ gh,              // [B, 3H] scratch
                                       const C eps,                     // layer_norm's ε
                                       const S* __restrict__ ln_h,      // [3H] h W_hhᵀ's gain (layer_norm), or null
                                       S* __restrict__ h_hat,           // [T, B, 3H] ĥ (layer_norm, TRAINING)
                                       C* __restrict__ rstd_h,          // [T, B] its 1/√(σ² + ε) (ditto)
                                       C* __restrict__ parts,           // [blocks, B, 2] scratch (layer_norm)
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
  auto step = [&](const int t, const int j0, const int n) {  // layer_norm: gh ← LN(gh)∘γ_h first
    if (ln_h != nullptr)
      normalise_rows<S, C>(B, H, 3, units, j0, n, eps, gh, ln_h, TRAINING ? h_hat + t * 3 * BH : nullptr,
                           TRAINING ? rstd_h + t * B : nullptr, parts, barrier);
    each_unit(B, unit)(t, j0, n);
  };
  persistent_forward<3, 0>(T, B, H, 0, units, 0, w_hh, static_cast<const C*>(nullptr), static_cast<const S*>(nullptr),
                           h0, y, rdrop == nullptr ? nullptr : hd, gh, static_cast<C*>(nullptr), barrier,
                           no_buffer<C>(), step, no_buffer<S>());
}

template <typename S, typename C, bool ZONEOUT>
__global__ void gru_persistent_backward(const int T, const int B, const int H, const int units, const C zoneout_h,
                                        const C rdrop_scale,
                                        const S* __restrict__ gates,     // [T, B, 4H] r z n (gh_n + b_hn)
                                        const S* h0,                     // [B, H]
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
                                        const S* __restrict__ ln_h,      // [3H] (layer_norm), or null
                                        const S* __restrict__ h_hat,     // [T, B, 3H] (layer_norm)
                                        const C* __restrict__ rstd_h,    // [T, B] (layer_norm)
                                        S* __restrict__ dgh_raw,         // [T, B, 3H] dgh before LN (layer_norm)
                                        C* __restrict__ parts,           // [blocks, B, 2] scratch (layer_norm)
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
  auto step = [&](const int t, const int j0, const int n) {  // layer_norm: then the gradient of h W_hhᵀ before it
    each_unit(B, unit)(t, j0, n);
    if (ln_h != nullptr)
      normalise_rows_backward<S, C>(B, H, 3, j0, n, dgh + t * 3 * BH, h_hat + t * 3 * BH, rstd_h + t * B, ln_h,
                                    dgh_raw + t * 3 * BH, parts, barrier);
  };
  persistent_backward<3>(T, B, H, units, H, w_hh, ln_h != nullptr ? dgh_raw : dgh, drec, barrier, step);
}

// The GRU with the reset before its GEMM (reset_after=False, Cho et al.): r∘h must be whole before (r∘h) W_hnᵀ,
// so each step meets the grid twice.  forward, step t:
//   ghrz[:, j] = h_in · W_hh[r|z rows of j]   gru_rz_unit   grid_sync   ghn[:, j] = (r∘h) · W_hn[j]   gru_n_unit
//   grid_sync
// backward, step t = T−1 … 0 (dg = [da_r, da_z, da_n], drec[T % 2] zeroed by the caller):
//   gru_n_backward_unit   grid_sync   drh[:, j] = dg_n · W_hn[:, j]   gru_rz_backward_unit   grid_sync
//   drec[t % 2][:, j] = dg_rz · W_hh[r|z rows, j]
// The weights as for reset_after: rows r, z, n of its units (forward), its columns of W_hh (backward).
template <typename S, typename C, bool ZONEOUT, bool TRAINING>
__global__ void gru_rb_persistent_forward(const int T, const int B, const int H, const int units, const C zoneout_h,
                                          const C rdrop_scale,
                                          const S* __restrict__ xw,        // [T, B, 3H] x Wihᵀ + b_ih + b_hh
                                          const S* __restrict__ w_hh,      // [3H, H]
                                          const S* h0,                     // [B, H]
                                          S* __restrict__ y,               // [T, B, H]
                                          S* __restrict__ h_last,          // [B, H], or null
                                          S* __restrict__ gates,           // [T, B, 3H] r z n ([1, B, 3H] inference)
                                          S* __restrict__ rh,              // [T, B, H] r∘h ([1, B, H] inference)
                                          const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                          const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                          S* __restrict__ hd,              // [2, B, H] d∘h (rdrop; hd[0] = d∘h0)
                                          const int* __restrict__ lengths, // [B], or null
                                          C* __restrict__ ghrz,            // [B, 2H] scratch
                                          C* __restrict__ ghn,             // [B, H] scratch
                                          unsigned int* barrier            // [1] zeroed
) {
  const long long BH = (long long)B * H;
  int j0, n;
  const Shared<S, C> sh = own_rows<S, C>(w_hh, 3, units, H, j0, n);
  for (int t = 0; t < T; ++t) {
    const int s = TRAINING ? t : 0;
    const S* h_prev = t == 0 ? h0 : y + (t - 1) * BH;
    const S* h_in = rdrop != nullptr ? hd + (t % 2) * BH : h_prev;
    S* gates_t = gates + s * 3 * BH;
    S* rh_t = rh + s * BH;
    block_dots(h_in, H, B, sh.w, H + ROW_PAD, 2 * n, H, sh.partial,
               [&](const int b, const int r, const C v) { ghrz[b * 2 * H + block_column(r, n, H, j0)] = v; });
    __syncthreads();
    for_each_unit(B, j0, n, [&](const int b, const int j) {
      gru_rz_unit<S, C>(b, j, H, xw + t * 3 * BH, ghrz, h_in, gates_t, rh_t);
    });
    grid_sync(barrier);  // r∘h is whole
    block_dots(rh_t, H, B, sh.w + 2 * n * (H + ROW_PAD), H + ROW_PAD, n, H, sh.partial,
               [&](const int b, const int r, const C v) { ghn[b * H + j0 + r] = v; });
    __syncthreads();
    for_each_unit(B, j0, n, [&](const int b, const int j) {
      gru_n_unit<S, C, ZONEOUT>(t, b, j, H, zoneout_h, rdrop_scale, xw + t * 3 * BH, ghn, h_prev, y + t * BH, h_last,
                                gates_t, zone_h == nullptr ? nullptr : zone_h + t * BH, rdrop,
                                rdrop == nullptr ? nullptr : hd + ((t + 1) % 2) * BH, lengths);
    });
    grid_sync(barrier);  // h' of step t (y[t], d∘y[t]) is whole
  }
}

template <typename S, typename C, bool ZONEOUT>
__global__ void gru_rb_persistent_backward(const int T, const int B, const int H, const int units,
                                           const C zoneout_h, const C rdrop_scale,
                                           const S* __restrict__ gates,     // [T, B, 3H] r z n
                                           const S* h0,                     // [B, H]
                                           const S* __restrict__ y,         // [T, B, H]
                                           const S* __restrict__ hd,        // [T, B, H] each step's d∘h, or null
                                           const S* __restrict__ dy,        // [T, B, H]
                                           C* __restrict__ dcarry,          // [2, B, H] dh, ping-pong
                                           C* __restrict__ drec,            // [2, B, H] dg_rz W_hh_rz, ping-pong
                                           S* __restrict__ dg,              // [T, B, 3H]
                                           const S* __restrict__ w_hh,      // [3H, H]
                                           C* __restrict__ drh,             // [B, H] scratch: d(r∘h)
                                           const unsigned char* __restrict__ zone_h,  // [T, B, H], or null
                                           const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                           const int* __restrict__ lengths, // [B], or null
                                           unsigned int* barrier            // [1] zeroed
) {
  const long long BH = (long long)B * H;
  const int GH = 3 * H;
  int j0, n;
  const Shared<S, C> sh = own_columns<S, C>(w_hh, GH, 1, units, H, j0, n);
  for (int t = T - 1; t >= 0; --t) {
    const int nxt = (t + 1) % 2, cur = t % 2;
    const S* h_prev = t == 0 ? h0 : y + (t - 1) * BH;
    const S* dg_t = dg + t * 3 * BH;
    for_each_unit(B, j0, n, [&](const int b, const int j) {
      gru_n_backward_unit<S, C, ZONEOUT>(t, b, j, H, zoneout_h, rdrop_scale, gates + t * 3 * BH, h_prev, dy + t * BH,
                                         dcarry + nxt * BH, drec + nxt * BH, dcarry + cur * BH, dg + t * 3 * BH,
                                         zone_h == nullptr ? nullptr : zone_h + t * BH, rdrop, lengths);
    });
    grid_sync(barrier);  // da_n is whole
    block_dots(dg_t + 2 * H, GH, B, sh.w + 2 * H, GH + ROW_PAD, n, H, sh.partial,
               [&](const int b, const int c, const C v) { drh[b * H + j0 + c] = v; });
    __syncthreads();
    for_each_unit(B, j0, n, [&](const int b, const int j) {
      gru_rz_backward_unit<S, C>(t, b, j, H, rdrop_scale, gates + t * 3 * BH, hd != nullptr ? hd + t * BH : h_prev, drh,
                                 dcarry + cur * BH, dg + t * 3 * BH, rdrop, lengths);
    });
    grid_sync(barrier);  // da_r is whole
    block_dots(dg_t, GH, B, sh.w, GH + ROW_PAD, n, 2 * H, sh.partial,
               [&](const int b, const int c, const C v) { drec[cur * BH + b * H + j0 + c] = v; });
    __syncthreads();  // this block's drec for the next step's units
  }
}
