// GRU pointwise kernels, one step; CPU twin: rnncells/_numpy.py (gru_*_step).
//
// reset_after (torch.nn.GRU, cuDNN), gh = h Whhᵀ, b_hn the n part of bias_hh:
//   r = σ(xw_r + gh_r)   z = σ(xw_z + gh_z)   n = tanh(xw_n + r∘(gh_n + b_hn))
//   h' = (1 − z)∘n + z∘h
// ZONEOUT: h' zoned out (common.cuh's zone(): each unit keeps its previous value where its mask is set).
// Recurrent dropout (a mask given): the GEMMs read h_drop = d∘h (common.cuh's kept()), which the kernel that writes
// h' also writes; gh, and reset before r∘h, are of d∘h; the mix z∘h is of h itself.
// h' is stored once, in y, which is also the next step's h (past an item's length y is 0, and
// its last h' goes to h_last).
// backward, dh = dh' + dy, dh' arriving in two parts: dcarry, which the later step's kernel wrote,
// and drec, the recurrent GEMM's output:
//   da_n = dh∘(1 − z)∘(1 − n²)   da_z = dh∘(h − n)∘z(1 − z)   da_r = da_n∘(gh_n + b_hn)∘r(1 − r)
//   dgi = [da_r, da_z, da_n]     dgh = [da_r, da_z, r∘da_n]     dh_prev = z∘dh (+ dgh Whh, next kernel)
//   (ZONEOUT: dh is first split by zone_grad, its previous-state part added to dh_prev; recurrent dropout: what
//   reaches h through d∘h, the GEMM's drec and, reset before, r∘drh, is multiplied by d)
// reset before (Cho et al., Keras) needs the GEMM (r∘h) Whnᵀ between r and n, so it is
// two kernels each way: gru_rz_step / gru_n_step and gru_n_backward_step / gru_rz_backward_step.
// Each kernel's body is a per-unit device function (gru_forward_unit, gru_rz_unit, ...), which the
// persistent kernels (persistent.cu) call too.
#pragma once
#include "common.cuh"

// Unit (b, j)'s whole forward step (reset_after): gru_forward_step's body, and the persistent kernel's.
template <typename S, typename C, bool ZONEOUT, bool TRAINING>
__device__ __forceinline__ void gru_forward_unit(const int t, const int b, const int j, const int H,
                                                 const C zoneout_h, const C rdrop_scale, const S* __restrict__ xw,
                                                 const C* __restrict__ gh, const S* __restrict__ b_hn,
                                                 const S* __restrict__ h, S* __restrict__ y, S* __restrict__ h_last,
                                                 S* __restrict__ gates, const unsigned char* __restrict__ zone_h,
                                                 const unsigned char* __restrict__ rdrop, S* __restrict__ h_drop,
                                                 const int* __restrict__ lengths) {
  const int state_idx = b * H + j;
  const int r_idx = b * 3 * H + j, z_idx = r_idx + H, n_idx = r_idx + 2 * H;  // in [B, 3H]
  const C r = sigmoid(C(xw[r_idx]) + gh[r_idx]);
  const C z = sigmoid(C(xw[z_idx]) + gh[z_idx]);
  const C ghn = gh[n_idx] + C(b_hn[j]);
  const C n = tanh(C(xw[n_idx]) + r * ghn);
  C h1 = (C(1) - z) * n + z * C(h[state_idx]);
  if constexpr (ZONEOUT) h1 = zone(zone_h, state_idx, zoneout_h, h, h1);
  if constexpr (TRAINING) {
    const int saved_r_idx = b * 4 * H + j;  // in [B, 4H]: r, z, n, gh_n + b_hn
    gates[saved_r_idx] = S(r);
    gates[saved_r_idx + H] = S(z);
    gates[saved_r_idx + 2 * H] = S(n);
    gates[saved_r_idx + 3 * H] = S(ghn);
  }
  const bool active = is_active(lengths, t, b);
  const S y1 = active ? S(h1) : S(C(0));
  y[state_idx] = y1;
  if (rdrop != nullptr) h_drop[state_idx] = S(C(y1) * kept(rdrop, state_idx, rdrop_scale));
  if (h_last != nullptr && active) h_last[state_idx] = S(h1);
}

template <typename S, typename C, bool ZONEOUT, bool TRAINING>
__global__ void gru_forward_step(const int t, const int B, const int H, const C zoneout_h, const C rdrop_scale,
                                 const S* __restrict__ xw,        // [B, 3H] x Wihᵀ + b_ih + [b_hr, b_hz, 0]
                                 const C* __restrict__ gh,        // [B, 3H] h Whhᵀ
                                 const S* __restrict__ b_hn,      // [H]
                                 const S* __restrict__ h,         // [B, H] before the step
                                 S* __restrict__ y,               // [B, H] h', also the next step's h
                                 S* __restrict__ h_last,          // [B, H] h' of each item's last step, or null
                                 S* __restrict__ gates,           // [B, 4H] r z n (gh_n + b_hn), when TRAINING
                                 const unsigned char* __restrict__ zone_h,  // [B, H] zoneout mask, or null
                                 const unsigned char* __restrict__ rdrop,   // [B, H] recurrent dropout mask or null
                                 S* __restrict__ h_drop,          // [B, H] d∘h', the next GEMM's h (with rdrop)
                                 const int* __restrict__ lengths  // [B] or null
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  gru_forward_unit<S, C, ZONEOUT, TRAINING>(t, state_idx / H, state_idx % H, H, zoneout_h, rdrop_scale, xw, gh, b_hn,
                                            h, y, h_last, gates, zone_h, rdrop, h_drop, lengths);
}

// Unit (b, j)'s whole backward step (reset_after): gru_backward_step's body, and the persistent kernel's.
template <typename S, typename C, bool ZONEOUT>
__device__ __forceinline__ void gru_backward_unit(const int t, const int b, const int j, const int H,
                                                  const C zoneout_h, const C rdrop_scale,
                                                  const S* __restrict__ gates, const S* __restrict__ h,
                                                  const S* __restrict__ dy, const C* __restrict__ dcarry,
                                                  const C* __restrict__ drec, C* __restrict__ dcarry_out,
                                                  S* __restrict__ dgi, S* __restrict__ dgh,
                                                  const unsigned char* __restrict__ zone_h,
                                                  const unsigned char* __restrict__ rdrop,
                                                  const int* __restrict__ lengths) {
  const int state_idx = b * H + j;
  const int r_idx = b * 3 * H + j, z_idx = r_idx + H, n_idx = r_idx + 2 * H;  // in [B, 3H]
  const int saved_r_idx = b * 4 * H + j;                                       // in [B, 4H]
  const C dh_in = dcarry[state_idx] + drec[state_idx] * kept(rdrop, state_idx, rdrop_scale);
  if (!is_active(lengths, t, b)) {
    dcarry_out[state_idx] = dh_in;
    dgi[r_idx] = dgi[z_idx] = dgi[n_idx] = S(C(0));
    dgh[r_idx] = dgh[z_idx] = dgh[n_idx] = S(C(0));
    return;
  }
  const C r = C(gates[saved_r_idx]), z = C(gates[saved_r_idx + H]);
  const C n = C(gates[saved_r_idx + 2 * H]), ghn = C(gates[saved_r_idx + 3 * H]);
  C dh = dh_in + C(dy[state_idx]), dh_zoned = C(0);
  if constexpr (ZONEOUT) zone_grad(zone_h, state_idx, zoneout_h, dh, dh_zoned, dh);
  const C da_n = dh * (C(1) - z) * (C(1) - n * n);
  const C da_z = dh * (C(h[state_idx]) - n) * z * (C(1) - z);
  const C da_r = da_n * ghn * r * (C(1) - r);
  dgi[r_idx] = dgh[r_idx] = S(da_r);
  dgi[z_idx] = dgh[z_idx] = S(da_z);
  dgi[n_idx] = S(da_n);
  dgh[n_idx] = S(da_n * r);
  dcarry_out[state_idx] = dh * z + dh_zoned;
}

template <typename S, typename C, bool ZONEOUT>
__global__ void gru_backward_step(const int t, const int B, const int H, const C zoneout_h, const C rdrop_scale,
                                  const S* __restrict__ gates,     // [B, 4H] r z n (gh_n + b_hn)
                                  const S* __restrict__ h,         // [B, H] before the step
                                  const S* __restrict__ dy,        // [B, H]
                                  const C* __restrict__ dcarry,    // [B, H] dh', the later kernel's part
                                  const C* __restrict__ drec,      // [B, H] dh', the GEMM's part
                                  C* __restrict__ dcarry_out,      // [B, H] dh, this kernel's part
                                  S* __restrict__ dgi,             // [B, 3H] d(xw)
                                  S* __restrict__ dgh,             // [B, 3H] d(gh)
                                  const unsigned char* __restrict__ zone_h,  // [B, H] zoneout mask, or null
                                  const unsigned char* __restrict__ rdrop,   // [B, H] recurrent dropout mask or null
                                  const int* __restrict__ lengths  // [B] or null
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  gru_backward_unit<S, C, ZONEOUT>(t, state_idx / H, state_idx % H, H, zoneout_h, rdrop_scale, gates, h, dy, dcarry,
                                   drec, dcarry_out, dgi, dgh, zone_h, rdrop, lengths);
}

// Reset before: unit (b, j)'s r, z and r∘h (gru_rz_step's body, and the persistent kernel's).
template <typename S, typename C>
__device__ __forceinline__ void gru_rz_unit(const int b, const int j, const int H, const S* __restrict__ xw,
                                            const C* __restrict__ ghrz, const S* __restrict__ h,
                                            S* __restrict__ gates, S* __restrict__ rh) {
  const int state_idx = b * H + j;
  const int r_idx = b * 3 * H + j, z_idx = r_idx + H;       // in [B, 3H]
  const int ghr_idx = b * 2 * H + j, ghz_idx = ghr_idx + H;  // in [B, 2H]
  const C r = sigmoid(C(xw[r_idx]) + ghrz[ghr_idx]);
  gates[r_idx] = S(r);
  gates[z_idx] = S(sigmoid(C(xw[z_idx]) + ghrz[ghz_idx]));
  rh[state_idx] = S(r * C(h[state_idx]));
}

template <typename S, typename C>
__global__ void gru_rz_step(const int B, const int H,
                            const S* __restrict__ xw,    // [B, 3H] x Wihᵀ + b_ih + b_hh
                            const C* __restrict__ ghrz,  // [B, 2H] h Whh_rzᵀ
                            const S* __restrict__ h,     // [B, H] (recurrent dropout: d∘h)
                            S* __restrict__ gates,       // [B, 3H] gets r, z
                            S* __restrict__ rh           // [B, H] r∘h
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  gru_rz_unit<S, C>(state_idx / H, state_idx % H, H, xw, ghrz, h, gates, rh);
}

// Reset before: unit (b, j)'s n and h' (gru_n_step's body, and the persistent kernel's).
template <typename S, typename C, bool ZONEOUT>
__device__ __forceinline__ void gru_n_unit(const int t, const int b, const int j, const int H, const C zoneout_h,
                                           const C rdrop_scale, const S* __restrict__ xw, const C* __restrict__ ghn,
                                           const S* __restrict__ h, S* __restrict__ y, S* __restrict__ h_last,
                                           S* __restrict__ gates, const unsigned char* __restrict__ zone_h,
                                           const unsigned char* __restrict__ rdrop, S* __restrict__ h_drop,
                                           const int* __restrict__ lengths) {
  const int state_idx = b * H + j;
  const int z_idx = b * 3 * H + j + H, n_idx = z_idx + H;  // in [B, 3H]
  const C z = C(gates[z_idx]);
  const C n = tanh(C(xw[n_idx]) + ghn[state_idx]);
  gates[n_idx] = S(n);
  C h1 = (C(1) - z) * n + z * C(h[state_idx]);
  if constexpr (ZONEOUT) h1 = zone(zone_h, state_idx, zoneout_h, h, h1);
  const bool active = is_active(lengths, t, b);
  const S y1 = active ? S(h1) : S(C(0));
  y[state_idx] = y1;
  if (rdrop != nullptr) h_drop[state_idx] = S(C(y1) * kept(rdrop, state_idx, rdrop_scale));
  if (h_last != nullptr && active) h_last[state_idx] = S(h1);
}

template <typename S, typename C, bool ZONEOUT>
__global__ void gru_n_step(const int t, const int B, const int H, const C zoneout_h, const C rdrop_scale,
                           const S* __restrict__ xw,        // [B, 3H]
                           const C* __restrict__ ghn,       // [B, H] (r∘h) Whnᵀ
                           const S* __restrict__ h,         // [B, H] before the step
                           S* __restrict__ y,               // [B, H] h', also the next step's h
                           S* __restrict__ h_last,          // [B, H] h' of each item's last step, or null
                           S* __restrict__ gates,           // [B, 3H] reads z, gets n
                           const unsigned char* __restrict__ zone_h,  // [B, H] zoneout mask, or null
                           const unsigned char* __restrict__ rdrop,   // [B, H] recurrent dropout mask or null
                           S* __restrict__ h_drop,          // [B, H] d∘h', the next GEMMs' h (with rdrop)
                           const int* __restrict__ lengths  // [B] or null
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  gru_n_unit<S, C, ZONEOUT>(t, state_idx / H, state_idx % H, H, zoneout_h, rdrop_scale, xw, ghn, h, y, h_last, gates,
                            zone_h, rdrop, h_drop, lengths);
}

// Reset before: unit (b, j)'s da_z, da_n and z∘dh (gru_n_backward_step's body, and the persistent kernel's).
template <typename S, typename C, bool ZONEOUT>
__device__ __forceinline__ void gru_n_backward_unit(const int t, const int b, const int j, const int H,
                                                    const C zoneout_h, const C rdrop_scale,
                                                    const S* __restrict__ gates, const S* __restrict__ h,
                                                    const S* __restrict__ dy, const C* __restrict__ dcarry,
                                                    const C* __restrict__ drec, C* __restrict__ dcarry_out,
                                                    S* __restrict__ dg, const unsigned char* __restrict__ zone_h,
                                                    const unsigned char* __restrict__ rdrop,
                                                    const int* __restrict__ lengths) {
  const int state_idx = b * H + j;
  const int z_idx = b * 3 * H + j + H, n_idx = z_idx + H;  // in [B, 3H]
  const C dh_in = dcarry[state_idx] + drec[state_idx] * kept(rdrop, state_idx, rdrop_scale);
  if (!is_active(lengths, t, b)) {
    dcarry_out[state_idx] = dh_in;
    dg[z_idx] = dg[n_idx] = S(C(0));
    return;
  }
  const C z = C(gates[z_idx]), n = C(gates[n_idx]);
  C dh = dh_in + C(dy[state_idx]), dh_zoned = C(0);
  if constexpr (ZONEOUT) zone_grad(zone_h, state_idx, zoneout_h, dh, dh_zoned, dh);
  dg[z_idx] = S(dh * (C(h[state_idx]) - n) * z * (C(1) - z));
  dg[n_idx] = S(dh * (C(1) - z) * (C(1) - n * n));
  dcarry_out[state_idx] = dh * z + dh_zoned;
}

template <typename S, typename C, bool ZONEOUT>
__global__ void gru_n_backward_step(const int t, const int B, const int H, const C zoneout_h, const C rdrop_scale,
                                    const S* __restrict__ gates,     // [B, 3H] r z n
                                    const S* __restrict__ h,         // [B, H]
                                    const S* __restrict__ dy,        // [B, H]
                                    const C* __restrict__ dcarry,    // [B, H] dh', the later kernel's part
                                    const C* __restrict__ drec,      // [B, H] dh', the GEMM's part
                                    C* __restrict__ dcarry_out,      // [B, H] dh, this kernel's part (so far)
                                    S* __restrict__ dg,              // [B, 3H] gets da_z, da_n
                                    const unsigned char* __restrict__ zone_h,  // [B, H] zoneout mask, or null
                                    const unsigned char* __restrict__ rdrop,   // [B, H] recurrent dropout mask or null
                                    const int* __restrict__ lengths  // [B] or null
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  gru_n_backward_unit<S, C, ZONEOUT>(t, state_idx / H, state_idx % H, H, zoneout_h, rdrop_scale, gates, h, dy, dcarry,
                                     drec, dcarry_out, dg, zone_h, rdrop, lengths);
}

// Reset before: unit (b, j)'s da_r, and r∘d(r∘h) into dh (gru_rz_backward_step's body, and the persistent kernel's).
template <typename S, typename C>
__device__ __forceinline__ void gru_rz_backward_unit(const int t, const int b, const int j, const int H,
                                                     const C rdrop_scale, const S* __restrict__ gates,
                                                     const S* __restrict__ h, const C* __restrict__ drh,
                                                     C* __restrict__ dcarry_out, S* __restrict__ dg,
                                                     const unsigned char* __restrict__ rdrop,
                                                     const int* __restrict__ lengths) {
  const int state_idx = b * H + j;
  const int r_idx = b * 3 * H + j;  // in [B, 3H]
  if (!is_active(lengths, t, b)) {
    dg[r_idx] = S(C(0));
    return;
  }
  const C r = C(gates[r_idx]), drh_j = drh[state_idx];
  dg[r_idx] = S(drh_j * C(h[state_idx]) * r * (C(1) - r));
  dcarry_out[state_idx] += r * drh_j * kept(rdrop, state_idx, rdrop_scale);
}

template <typename S, typename C>
__global__ void gru_rz_backward_step(const int t, const int B, const int H, const C rdrop_scale,
                                     const S* __restrict__ gates,     // [B, 3H] r z n
                                     const S* __restrict__ h,         // [B, H] (recurrent dropout: d∘h)
                                     const C* __restrict__ drh,       // [B, H] da_n Whn = d(r∘h)
                                     C* __restrict__ dcarry_out,      // [B, H] += r∘drh (d∘r∘drh)
                                     S* __restrict__ dg,              // [B, 3H] gets da_r
                                     const unsigned char* __restrict__ rdrop,  // [B, H] recurrent dropout mask or null
                                     const int* __restrict__ lengths  // [B] or null
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  gru_rz_backward_unit<S, C>(t, state_idx / H, state_idx % H, H, rdrop_scale, gates, h, drh, dcarry_out, dg, rdrop,
                             lengths);
}
