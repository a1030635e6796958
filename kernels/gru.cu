// GRU pointwise kernels, one step; CPU twin: rnncells/_numpy.py (gru_*_step).
//
// reset_after (torch.nn.GRU, cuDNN), gh = h Whhᵀ, b_hn the n part of bias_hh:
//   r = σ(xw_r + gh_r)   z = σ(xw_z + gh_z)   n = tanh(xw_n + r∘(gh_n + b_hn))
//   h' = (1 − z)∘n + z∘h
// h' is stored once, in y, which is also the next step's h (past an item's length y is 0, and
// its last h' goes to h_last).
// backward, dh = dh' + dy:
//   da_n = dh∘(1 − z)∘(1 − n²)   da_z = dh∘(h − n)∘z(1 − z)   da_r = da_n∘(gh_n + b_hn)∘r(1 − r)
//   dgi = [da_r, da_z, da_n]     dgh = [da_r, da_z, r∘da_n]     dh_prev = z∘dh (+ dgh Whh, next kernel)
// reset before (Cho et al., Keras) needs the GEMM (r∘h) Whnᵀ between r and n, so it is
// two kernels each way: gru_rz_step / gru_n_step and gru_n_backward_step / gru_rz_backward_step.
#include "common.cuh"

template <typename S, typename C, bool TRAINING>
__global__ void gru_forward_step(const int t, const int B, const int H,
                                 const S* __restrict__ xw,        // [B, 3H] x Wihᵀ + b_ih + [b_hr, b_hz, 0]
                                 const S* __restrict__ gh,        // [B, 3H] h Whhᵀ
                                 const S* __restrict__ b_hn,      // [H]
                                 const S* __restrict__ h,         // [B, H] before the step
                                 S* __restrict__ y,               // [B, H] h', also the next step's h
                                 S* __restrict__ h_last,          // [B, H] h' of each item's last step, or null
                                 S* __restrict__ gates,           // [B, 4H] r z n (gh_n + b_hn), when TRAINING
                                 const int* __restrict__ lengths  // [B] or null
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 3 * H + j;
  const C r = sigmoid(C(xw[a]) + C(gh[a]));
  const C z = sigmoid(C(xw[a + H]) + C(gh[a + H]));
  const C ghn = C(gh[a + 2 * H]) + C(b_hn[j]);
  const C n = tanh(C(xw[a + 2 * H]) + r * ghn);
  const C hp = C(h[idx]);
  const C h1 = (C(1) - z) * n + z * hp;
  if constexpr (TRAINING) {
    const int g = b * 4 * H + j;
    gates[g] = S(r);
    gates[g + H] = S(z);
    gates[g + 2 * H] = S(n);
    gates[g + 3 * H] = S(ghn);
  }
  const bool active = is_active(lengths, t, b);
  y[idx] = active ? S(h1) : S(0);
  if (h_last != nullptr && active) h_last[idx] = S(h1);
}

template <typename S, typename C>
__global__ void gru_backward_step(const int t, const int B, const int H,
                                  const S* __restrict__ gates,     // [B, 4H] r z n (gh_n + b_hn)
                                  const S* __restrict__ h,         // [B, H] before the step
                                  const S* __restrict__ dy,        // [B, H]
                                  const S* __restrict__ dpw,       // [B, H] dh', pointwise part
                                  const S* __restrict__ dmm,       // [B, H] dh', GEMM part
                                  S* __restrict__ dpw_out,         // [B, H] dh, pointwise part
                                  S* __restrict__ dgi,             // [B, 3H] d(xw)
                                  S* __restrict__ dgh,             // [B, 3H] d(gh)
                                  const int* __restrict__ lengths  // [B] or null
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 3 * H + j, g = b * 4 * H + j;
  const C dh_in = C(dpw[idx]) + C(dmm[idx]);
  if (!is_active(lengths, t, b)) {
    dpw_out[idx] = S(dh_in);
    dgi[a] = dgi[a + H] = dgi[a + 2 * H] = S(0);
    dgh[a] = dgh[a + H] = dgh[a + 2 * H] = S(0);
    return;
  }
  const C r = C(gates[g]), z = C(gates[g + H]), n = C(gates[g + 2 * H]), ghn = C(gates[g + 3 * H]);
  const C dh = dh_in + C(dy[idx]);
  const C da_n = dh * (C(1) - z) * (C(1) - n * n);
  const C da_z = dh * (C(h[idx]) - n) * z * (C(1) - z);
  const C da_r = da_n * ghn * r * (C(1) - r);
  dgi[a] = dgh[a] = S(da_r);
  dgi[a + H] = dgh[a + H] = S(da_z);
  dgi[a + 2 * H] = S(da_n);
  dgh[a + 2 * H] = S(da_n * r);
  dpw_out[idx] = S(dh * z);
}

template <typename S, typename C>
__global__ void gru_rz_step(const int B, const int H,
                            const S* __restrict__ xw,    // [B, 3H] x Wihᵀ + b_ih + b_hh
                            const S* __restrict__ ghrz,  // [B, 2H] h Whh_rzᵀ
                            const S* __restrict__ h,     // [B, H]
                            S* __restrict__ gates,       // [B, 3H] gets r, z
                            S* __restrict__ rh           // [B, H] r∘h
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 3 * H + j, m = b * 2 * H + j;
  const C r = sigmoid(C(xw[a]) + C(ghrz[m]));
  gates[a] = S(r);
  gates[a + H] = S(sigmoid(C(xw[a + H]) + C(ghrz[m + H])));
  rh[idx] = S(r * C(h[idx]));
}

template <typename S, typename C>
__global__ void gru_n_step(const int t, const int B, const int H,
                           const S* __restrict__ xw,        // [B, 3H]
                           const S* __restrict__ ghn,       // [B, H] (r∘h) Whnᵀ
                           const S* __restrict__ h,         // [B, H] before the step
                           S* __restrict__ y,               // [B, H] h', also the next step's h
                           S* __restrict__ h_last,          // [B, H] h' of each item's last step, or null
                           S* __restrict__ gates,           // [B, 3H] reads z, gets n
                           const int* __restrict__ lengths  // [B] or null
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 3 * H + j;
  const C z = C(gates[a + H]);
  const C n = tanh(C(xw[a + 2 * H]) + C(ghn[idx]));
  gates[a + 2 * H] = S(n);
  const C h1 = (C(1) - z) * n + z * C(h[idx]);
  const bool active = is_active(lengths, t, b);
  y[idx] = active ? S(h1) : S(0);
  if (h_last != nullptr && active) h_last[idx] = S(h1);
}

template <typename S, typename C>
__global__ void gru_n_backward_step(const int t, const int B, const int H,
                                    const S* __restrict__ gates,     // [B, 3H] r z n
                                    const S* __restrict__ h,         // [B, H]
                                    const S* __restrict__ dy,        // [B, H]
                                    const S* __restrict__ dpw,       // [B, H] dh', pointwise part
                                    const S* __restrict__ dmm,       // [B, H] dh', GEMM part
                                    S* __restrict__ dpw_out,         // [B, H] dh, pointwise part (so far)
                                    S* __restrict__ dg,              // [B, 3H] gets da_z, da_n
                                    const int* __restrict__ lengths  // [B] or null
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 3 * H + j;
  const C dh_in = C(dpw[idx]) + C(dmm[idx]);
  if (!is_active(lengths, t, b)) {
    dpw_out[idx] = S(dh_in);
    dg[a + H] = dg[a + 2 * H] = S(0);
    return;
  }
  const C z = C(gates[a + H]), n = C(gates[a + 2 * H]);
  const C dh = dh_in + C(dy[idx]);
  dg[a + H] = S(dh * (C(h[idx]) - n) * z * (C(1) - z));
  dg[a + 2 * H] = S(dh * (C(1) - z) * (C(1) - n * n));
  dpw_out[idx] = S(dh * z);
}

template <typename S, typename C>
__global__ void gru_rz_backward_step(const int t, const int B, const int H,
                                     const S* __restrict__ gates,     // [B, 3H] r z n
                                     const S* __restrict__ h,         // [B, H]
                                     const S* __restrict__ drh,       // [B, H] da_n Whn = d(r∘h)
                                     S* __restrict__ dpw_out,         // [B, H] += r∘drh
                                     S* __restrict__ dg,              // [B, 3H] gets da_r
                                     const int* __restrict__ lengths  // [B] or null
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 3 * H + j;
  if (!is_active(lengths, t, b)) {
    dg[a] = S(0);
    return;
  }
  const C r = C(gates[a]), d = C(drh[idx]);
  dg[a] = S(d * C(h[idx]) * r * (C(1) - r));
  dpw_out[idx] = S(C(dpw_out[idx]) + r * d);
}
