// LSTM pointwise kernels, one step; CPU twin: rnncells/_numpy.py (lstm_*_step).
//
// forward, a = xw + hw split into a_i a_f a_g a_o (FULL adds c Wchᵀ to a_i a_f a_o, DIAGONAL the w_· terms):
//   i = σ(a_i + w_i∘c)   f = σ(a_f + w_f∘c)   g = tanh(a_g)   (σ(a_g) with SIGMOID_CANDIDATE)
//   c' = f∘c + i∘g       (CLIP: clipped to [−cell_clip, cell_clip], TensorFlow's LSTMCell)
//   o = σ(a_o + w_o∘c')  h' = o∘tanh(c')
//   ZONEOUT: the state is c' and h' zoned out, each unit keeping its previous value where its mask is set
//   (training) or mixed by the probability (evaluation): common.cuh's zone(); o and tanh read c' itself.
//   Recurrent dropout (a mask given, training): h_drop = d∘h' for the next step's GEMM, common.cuh's kept().
// h' is stored once, in y, which is also the next step's h: the states kept for backward are
// y and c (no second copy of h), so past an item's length its h reads as 0 (y is 0 there) and
// its last h' goes to h_last; c stays frozen.
// backward, dh = dh' + dy and dc = dc', each arriving in two parts: dcarry, which the later step's
// kernel wrote, and drec, the recurrent GEMM's da' Wrec (so no GEMM has to accumulate), which is d(d∘h) under
// recurrent dropout: d∘drec is dh's part.  ZONEOUT splits each
// between the previous state and c', h' (zone_grad), and recomputes c' from the saved gates:
//   da_o = dh∘tanh(c')∘o(1−o)        dc += dh∘o∘(1 − tanh²c')  (+ w_o∘da_o)   (CLIP: dc = 0 where |c'| = clip)
//   da_i = dc∘g∘i(1−i)   da_f = dc∘c∘f(1−f)   da_g = dc∘i∘g'
//   dc_prev = dc∘f  (+ w_i∘da_i + w_f∘da_f)
// The recurrent GEMM's part of dh_prev (da Wrec) is added by the next step's kernel; zoneout's part is here.
// A projected LSTM (proj_size, h = W_hr h'; rnncells/_sequence.py) runs these kernels on h' itself: y is then
// h' [B, H], which a GEMM projects, and its dh' = (dy + dh) W_hr arrives whole in drec, with no dy.
//
// LayerNorm LSTM (layer_norm; haste's LayerNormLSTM, Ba et al. 2016): xw and hw arrive normalised (layernorm.cu),
// and c' is normalised over the row's H units before the output's tanh; the state stays c' itself:
//   ĉ = (c' − μ) / √(σ² + ε)   n = γ_c∘ĉ + β_c   h' = o∘tanh(n)
//   dn = dh∘o∘(1 − tanh²n)     dĉ = γ_c∘dn       dc += (dĉ − mean(dĉ) − ĉ∘mean(dĉ∘ĉ)) / √(σ² + ε)
// The row statistics need every unit of the row, so lstm_ln_*_step run one block per item b, each thread striding
// over units j and the block meeting in layernorm.cu's block functions; the unit's own work is the same device
// functions (lstm_unit, lstm_commit, lstm_incoming, lstm_unit_grad, lstm_gate_grads) as the one-thread-per-unit
// kernels'.
#pragma once
#include "common.cuh"
#include "layernorm.cu"

// One unit's gates and c' (the forward's first half).
template <typename C>
struct LSTMUnit {
  C i, f, g, o, c1;
};

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP>
__device__ __forceinline__ LSTMUnit<C> lstm_unit(const int b, const int j, const int H, const C cell_clip,
                                                 const S* __restrict__ xw, const C* __restrict__ hw,
                                                 const C* __restrict__ cw, const C c, const S* __restrict__ w_peep) {
  const int i_idx = b * 4 * H + j, f_idx = i_idx + H, g_idx = i_idx + 2 * H, o_idx = i_idx + 3 * H;  // in [B, 4H]
  C a_i = C(xw[i_idx]) + hw[i_idx];
  C a_f = C(xw[f_idx]) + hw[f_idx];
  const C a_g = C(xw[g_idx]) + hw[g_idx];
  C a_o = C(xw[o_idx]) + hw[o_idx];
  if constexpr (PEEPHOLE == PEEPHOLE_FULL) {
    const int cw_i_idx = b * 3 * H + j;  // in [B, 3H]: i, f, o
    a_i += cw[cw_i_idx];
    a_f += cw[cw_i_idx + H];
    a_o += cw[cw_i_idx + 2 * H];
  }
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) {
    a_i += C(w_peep[j]) * c;
    a_f += C(w_peep[H + j]) * c;
  }
  LSTMUnit<C> u;
  u.i = sigmoid(a_i);
  u.f = sigmoid(a_f);
  u.g = candidate<SIGMOID_CANDIDATE>(a_g);
  u.c1 = u.f * c + u.i * u.g;
  if constexpr (CLIP) u.c1 = clip(u.c1, cell_clip);
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) a_o += C(w_peep[2 * H + j]) * u.c1;
  u.o = sigmoid(a_o);
  return u;
}

// Zoneout of h' and c', then the unit's writes: its gates (TRAINING), c, y = h' (0 past the item's length), d∘h'
// (recurrent dropout), h_last.
template <typename S, typename C, bool ZONEOUT, bool TRAINING>
__device__ __forceinline__ void lstm_commit(const int t, const int b, const int j, const int H, const C zoneout_h,
                                            const C zoneout_c, const C rdrop_scale, const LSTMUnit<C>& u, C h1,
                                            const S* __restrict__ h_prev, const C* __restrict__ c_prev,
                                            C* __restrict__ c_next, S* __restrict__ y, S* __restrict__ h_last,
                                            S* __restrict__ gates, const unsigned char* __restrict__ zone_h,
                                            const unsigned char* __restrict__ zone_c,
                                            const unsigned char* __restrict__ rdrop, S* __restrict__ h_drop,
                                            const int* __restrict__ lengths) {
  const int state_idx = b * H + j, i_idx = b * 4 * H + j;
  const C c = c_prev[state_idx];
  C c1 = u.c1;
  if constexpr (ZONEOUT) {
    h1 = zone(zone_h, state_idx, zoneout_h, h_prev, h1);
    c1 = zone(zone_c, state_idx, zoneout_c, c_prev, c1);
  }
  if constexpr (TRAINING) {
    gates[i_idx] = S(u.i);
    gates[i_idx + H] = S(u.f);
    gates[i_idx + 2 * H] = S(u.g);
    gates[i_idx + 3 * H] = S(u.o);
  }
  const bool active = is_active(lengths, t, b);
  c_next[state_idx] = active ? c1 : c;
  const S y1 = active ? S(h1) : S(C(0));
  y[state_idx] = y1;
  if (rdrop != nullptr) h_drop[state_idx] = S(C(y1) * kept(rdrop, state_idx, rdrop_scale));
  if (h_last != nullptr && active) h_last[state_idx] = S(h1);
}

// Unit (b, j)'s whole forward step: lstm_forward_step's body, and the persistent kernel's (persistent.cu).
template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
__device__ __forceinline__ void lstm_forward_unit(const int t, const int b, const int j, const int H,
                                                  const C cell_clip, const C zoneout_h, const C zoneout_c,
                                                  const C rdrop_scale, const S* __restrict__ xw,
                                                  const C* __restrict__ hw, const C* __restrict__ cw,
                                                  const S* __restrict__ h_prev, const C* __restrict__ c_prev,
                                                  C* __restrict__ c_next, S* __restrict__ y, S* __restrict__ h_last,
                                                  S* __restrict__ gates, const S* __restrict__ w_peep,
                                                  const unsigned char* __restrict__ zone_h,
                                                  const unsigned char* __restrict__ zone_c,
                                                  const unsigned char* __restrict__ rdrop, S* __restrict__ h_drop,
                                                  const int* __restrict__ lengths) {
  const LSTMUnit<C> u = lstm_unit<S, C, PEEPHOLE, SIGMOID_CANDIDATE, CLIP>(b, j, H, cell_clip, xw, hw, cw,
                                                                           c_prev[b * H + j], w_peep);
  lstm_commit<S, C, ZONEOUT, TRAINING>(t, b, j, H, zoneout_h, zoneout_c, rdrop_scale, u, u.o * tanh(u.c1), h_prev,
                                       c_prev, c_next, y, h_last, gates, zone_h, zone_c, rdrop, h_drop, lengths);
}

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
__global__ void lstm_forward_step(const int t, const int B, const int H, const C cell_clip, const C zoneout_h,
                                  const C zoneout_c, const C rdrop_scale,
                                  const S* __restrict__ xw,        // [B, 4H] x Wihᵀ + biases, this step
                                  const C* __restrict__ hw,        // [B, 4H] h Whhᵀ
                                  const C* __restrict__ cw,        // [B, 3H] c Wchᵀ (i f o) when FULL
                                  const S* __restrict__ h_prev,    // [B, H] h before the step, or null (no zoneout_h)
                                  const C* __restrict__ c_prev,    // [B, H] c before the step
                                  C* __restrict__ c_next,          // [B, H] c after it
                                  S* __restrict__ y,               // [B, H] h', also the next step's h
                                  S* __restrict__ h_last,          // [B, H] h' of each item's last step, or null
                                  S* __restrict__ gates,           // [B, 4H] i f g o, saved when TRAINING
                                  const S* __restrict__ w_peep,    // [3H] w_i w_f w_o when DIAGONAL
                                  const unsigned char* __restrict__ zone_h,  // [B, H] zoneout mask, or null
                                  const unsigned char* __restrict__ zone_c,  // [B, H] zoneout mask, or null
                                  const unsigned char* __restrict__ rdrop,   // [B, H] recurrent dropout mask or null
                                  S* __restrict__ h_drop,          // [B, H] d∘h', the next GEMM's h (with rdrop)
                                  const int* __restrict__ lengths  // [B], or null: every item runs
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  lstm_forward_unit<S, C, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>(
      t, state_idx / H, state_idx % H, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, xw, hw, cw, h_prev, c_prev,
      c_next, y, h_last, gates, w_peep, zone_h, zone_c, rdrop, h_drop, lengths);
}

// The LayerNorm LSTM's unit (b, j) once its row's c' statistics (mean, r = 1/√(σ² + ε)) are known: ĉ (kept when
// TRAINING), h' = o∘tanh(γ_c∘ĉ + β_c) and the commit; the gates are recomputed.  lstm_ln_forward_step's last pass,
// and the persistent kernel's.
template <typename S, typename C, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
__device__ __forceinline__ void lstm_ln_forward_unit(const int t, const int b, const int j, const int H,
                                                     const C cell_clip, const C zoneout_h, const C zoneout_c,
                                                     const C rdrop_scale, const C mean, const C r,
                                                     const S* __restrict__ xw, const C* __restrict__ hw,
                                                     const S* __restrict__ h_prev, const C* __restrict__ c_prev,
                                                     C* __restrict__ c_next, S* __restrict__ y,
                                                     S* __restrict__ h_last, S* __restrict__ gates,
                                                     const unsigned char* __restrict__ zone_h,
                                                     const unsigned char* __restrict__ zone_c,
                                                     const unsigned char* __restrict__ rdrop, S* __restrict__ h_drop,
                                                     const int* __restrict__ lengths, const S* __restrict__ gamma_c,
                                                     const S* __restrict__ beta_c, S* __restrict__ c_hat) {
  const LSTMUnit<C> u = lstm_unit<S, C, PEEPHOLE_NONE, SIGMOID_CANDIDATE, CLIP>(b, j, H, cell_clip, xw, hw, nullptr,
                                                                                c_prev[b * H + j], nullptr);
  const C c_n = (u.c1 - mean) * r;
  if constexpr (TRAINING) c_hat[b * H + j] = S(c_n);
  const C h1 = u.o * tanh(C(gamma_c[j]) * c_n + C(beta_c[j]));
  lstm_commit<S, C, ZONEOUT, TRAINING>(t, b, j, H, zoneout_h, zoneout_c, rdrop_scale, u, h1, h_prev, c_prev, c_next,
                                       y, h_last, gates, zone_h, zone_c, rdrop, h_drop, lengths);
}

// lstm_forward_step with c' normalised (layer_norm, which takes no peephole): one block per item b, three passes
// over its units: Σc', then Σ(c' − μ)², then each unit's ĉ and h'.  The first pass parks c' in c_next, which the
// third overwrites with the state; each thread reads back only the units it wrote.  The third recomputes the gates
// rather than keeping them.
template <typename S, typename C, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
__global__ void lstm_ln_forward_step(const int t, const int B, const int H, const C cell_clip, const C zoneout_h,
                                     const C zoneout_c, const C rdrop_scale, const C eps,
                                     const S* __restrict__ xw,        // [B, 4H] LN(x Wihᵀ)∘γ_x + biases
                                     const C* __restrict__ hw,        // [B, 4H] LN(h Whhᵀ)∘γ_h
                                     const S* __restrict__ h_prev,    // [B, H], or null (no zoneout_h)
                                     const C* __restrict__ c_prev,    // [B, H]
                                     C* __restrict__ c_next,          // [B, H]
                                     S* __restrict__ y,               // [B, H]
                                     S* __restrict__ h_last,          // [B, H], or null
                                     S* __restrict__ gates,           // [B, 4H] when TRAINING
                                     const unsigned char* __restrict__ zone_h,  // [B, H], or null
                                     const unsigned char* __restrict__ zone_c,  // [B, H], or null
                                     const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                     S* __restrict__ h_drop,          // [B, H] (with rdrop)
                                     const int* __restrict__ lengths, // [B], or null
                                     const S* __restrict__ gamma_c,   // [H] c's gain
                                     const S* __restrict__ beta_c,    // [H] c's shift
                                     S* __restrict__ c_hat,           // [B, H] ĉ, kept when TRAINING
                                     C* __restrict__ rstd_c           // [B] 1/√(σ² + ε), kept when TRAINING
) {
  __shared__ C shared[LN_THREADS];
  const int b = blockIdx.x;
  auto unit = [&](const int j) {
    return lstm_unit<S, C, PEEPHOLE_NONE, SIGMOID_CANDIDATE, CLIP>(b, j, H, cell_clip, xw, hw, nullptr,
                                                                   c_prev[b * H + j], nullptr);
  };
  C sum = C(0);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const C c1 = unit(j).c1;
    c_next[b * H + j] = c1;
    sum += c1;
  }
  const C mean = block_sum(sum, shared) / C(H);
  const C r = block_rstd(c_next + b * H, H, mean, eps, shared);  // each thread reads back the units it parked
  for (int j = threadIdx.x; j < H; j += blockDim.x)
    lstm_ln_forward_unit<S, C, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>(
        t, b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, mean, r, xw, hw, h_prev, c_prev, c_next, y, h_last,
        gates, zone_h, zone_c, rdrop, h_drop, lengths, gamma_c, beta_c, c_hat);
  if (TRAINING && threadIdx.x == 0) rstd_c[b] = r;
}

// dh and dc as they arrive at unit (b, j): the later kernel's part plus the GEMM's (dh's times d under recurrent
// dropout; dc's from the GEMM only when FULL).
template <typename C, int PEEPHOLE>
__device__ __forceinline__ void lstm_incoming(const int b, const int j, const int H, const int n_rec,
                                              const C rdrop_scale, const C* __restrict__ dcarry,
                                              const C* __restrict__ drec, const unsigned char* __restrict__ rdrop,
                                              C& dh_in, C& dc_in) {
  const int dh_idx = b * 2 * H + j, drec_h_idx = b * n_rec + j;  // in [B, 2H] and [B, n_rec]
  dh_in = dcarry[dh_idx] + drec[drec_h_idx] * kept(rdrop, b * H + j, rdrop_scale);
  dc_in = dcarry[dh_idx + H];
  if constexpr (PEEPHOLE == PEEPHOLE_FULL) dc_in += drec[drec_h_idx + H];
}

// Past its length an item's gradient passes through unchanged, and its pre-activations get none.
template <typename S, typename C>
__device__ __forceinline__ void lstm_pass_through(const int b, const int j, const int H, const C dh_in,
                                                  const C dc_in, C* __restrict__ dcarry_out, S* __restrict__ da) {
  const int dh_idx = b * 2 * H + j, i_idx = b * 4 * H + j;
  dcarry_out[dh_idx] = dh_in;
  dcarry_out[dh_idx + H] = dc_in;
  da[i_idx] = da[i_idx + H] = da[i_idx + 2 * H] = da[i_idx + 3 * H] = S(C(0));
}

// An active unit's saved gates, c and c' (recomputed under zoneout, whose state is c' zoned out), and dh, dc
// split by zoneout between the previous state (dh_prev, dc_zoned) and h', c' (dh, dc_new).
template <typename C>
struct LSTMUnitGrad {
  C i, f, g, o, c, c1, dh, dh_prev, dc_new, dc_zoned;
};

template <typename S, typename C, bool CLIP, bool ZONEOUT>
__device__ __forceinline__ LSTMUnitGrad<C> lstm_unit_grad(const int b, const int j, const int H, const C cell_clip,
                                                          const C zoneout_h, const C zoneout_c, const C dh_in,
                                                          const C dc_in, const S* __restrict__ gates,
                                                          const C* __restrict__ c_prev, const C* __restrict__ c_next,
                                                          const S* __restrict__ dy,
                                                          const unsigned char* __restrict__ zone_h,
                                                          const unsigned char* __restrict__ zone_c) {
  const int state_idx = b * H + j, i_idx = b * 4 * H + j;
  LSTMUnitGrad<C> u;
  u.i = C(gates[i_idx]);
  u.f = C(gates[i_idx + H]);
  u.g = C(gates[i_idx + 2 * H]);
  u.o = C(gates[i_idx + 3 * H]);
  u.c = c_prev[state_idx];
  u.c1 = c_next[state_idx];
  u.dh = dy != nullptr ? dh_in + C(dy[state_idx]) : dh_in;
  u.dh_prev = C(0);
  u.dc_new = dc_in;
  u.dc_zoned = C(0);
  if constexpr (ZONEOUT) {
    u.c1 = u.f * u.c + u.i * u.g;
    if constexpr (CLIP) u.c1 = clip(u.c1, cell_clip);
    zone_grad(zone_h, state_idx, zoneout_h, u.dh, u.dh_prev, u.dh);
    zone_grad(zone_c, state_idx, zoneout_c, dc_in, u.dc_zoned, u.dc_new);
  }
  return u;
}

// From dc' (everything that reached c') and da_o: the gate gradients da and the carries to the step before.
template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP>
__device__ __forceinline__ void lstm_gate_grads(const int b, const int j, const int H, const C cell_clip,
                                                const LSTMUnitGrad<C>& u, C dc, const C da_o,
                                                const S* __restrict__ w_peep, C* __restrict__ dcarry_out,
                                                S* __restrict__ da) {
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) dc += C(w_peep[2 * H + j]) * da_o;
  if constexpr (CLIP) {  // a clipped c' is exactly ±cell_clip (c is kept in C); a NaN c' passes its gradient on
    if (fabs(u.c1) >= cell_clip) dc = C(0);
  }
  const C da_i = dc * u.g * u.i * (C(1) - u.i);
  const C da_f = dc * u.c * u.f * (C(1) - u.f);
  const C da_g = dc * u.i * candidate_grad<SIGMOID_CANDIDATE>(u.g);
  C dc_prev = dc * u.f + u.dc_zoned;
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) dc_prev += C(w_peep[j]) * da_i + C(w_peep[H + j]) * da_f;
  const int i_idx = b * 4 * H + j, dh_idx = b * 2 * H + j;
  da[i_idx] = S(da_i);
  da[i_idx + H] = S(da_f);
  da[i_idx + 2 * H] = S(da_g);
  da[i_idx + 3 * H] = S(da_o);
  dcarry_out[dh_idx] = u.dh_prev;  // zoneout's part (0 without): the next kernel adds the GEMM's, da Wrec
  dcarry_out[dh_idx + H] = dc_prev;
}

// Unit (b, j)'s whole backward step: lstm_backward_step's body, and the persistent kernel's (persistent.cu).
template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
__device__ __forceinline__ void lstm_backward_unit(const int t, const int b, const int j, const int H,
                                                   const C cell_clip, const C zoneout_h, const C zoneout_c,
                                                   const C rdrop_scale, const int n_rec, const S* __restrict__ gates,
                                                   const C* __restrict__ c_prev, const C* __restrict__ c_next,
                                                   const S* __restrict__ dy, const C* __restrict__ dcarry,
                                                   const C* __restrict__ drec, C* __restrict__ dcarry_out,
                                                   S* __restrict__ da, const S* __restrict__ w_peep,
                                                   const unsigned char* __restrict__ zone_h,
                                                   const unsigned char* __restrict__ zone_c,
                                                   const unsigned char* __restrict__ rdrop,
                                                   const int* __restrict__ lengths) {
  C dh_in, dc_in;
  lstm_incoming<C, PEEPHOLE>(b, j, H, n_rec, rdrop_scale, dcarry, drec, rdrop, dh_in, dc_in);
  if (!is_active(lengths, t, b)) return lstm_pass_through(b, j, H, dh_in, dc_in, dcarry_out, da);
  const LSTMUnitGrad<C> u = lstm_unit_grad<S, C, CLIP, ZONEOUT>(b, j, H, cell_clip, zoneout_h, zoneout_c, dh_in,
                                                                dc_in, gates, c_prev, c_next, dy, zone_h, zone_c);
  const C tc = tanh(u.c1);
  const C da_o = u.dh * tc * u.o * (C(1) - u.o);
  const C dc = u.dc_new + u.dh * u.o * (C(1) - tc * tc);
  lstm_gate_grads<S, C, PEEPHOLE, SIGMOID_CANDIDATE, CLIP>(b, j, H, cell_clip, u, dc, da_o, w_peep, dcarry_out, da);
}

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
__global__ void lstm_backward_step(const int t, const int B, const int H, const C cell_clip, const C zoneout_h,
                                   const C zoneout_c, const C rdrop_scale, const int n_rec,
                                   const S* __restrict__ gates,     // [B, 4H] i f g o
                                   const C* __restrict__ c_prev,    // [B, H] c before the step
                                   const C* __restrict__ c_next,    // [B, H] c after it
                                   const S* __restrict__ dy,        // [B, H], or null (projected: dh arrives in drec)
                                   const C* __restrict__ dcarry,    // [B, 2H] d[h | c]', the later kernel's part
                                   const C* __restrict__ drec,      // [B, n_rec] d[h | c]', the GEMM's part
                                   C* __restrict__ dcarry_out,      // [B, 2H] d[h | c], this kernel's part
                                   S* __restrict__ da,              // [B, 4H] d(pre-activations)
                                   const S* __restrict__ w_peep,    // [3H] when DIAGONAL
                                   const unsigned char* __restrict__ zone_h,  // [B, H] zoneout mask, or null
                                   const unsigned char* __restrict__ zone_c,  // [B, H] zoneout mask, or null
                                   const unsigned char* __restrict__ rdrop,   // [B, H] recurrent dropout mask or null
                                   const int* __restrict__ lengths  // [B] or null
) {
  const int state_idx = blockIdx.x * blockDim.x + threadIdx.x;  // (b, j) in [B, H]
  if (state_idx >= B * H) return;
  lstm_backward_unit<S, C, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT>(
      t, state_idx / H, state_idx % H, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, n_rec, gates, c_prev, c_next,
      dy, dcarry, drec, dcarry_out, da, w_peep, zone_h, zone_c, rdrop, lengths);
}

// The LayerNorm LSTM's backward, unit (b, j) of an item past its length: its gradient passes through, dn = 0.
template <typename S, typename C>
__device__ __forceinline__ void lstm_ln_pass_through(const int b, const int j, const int H, const C rdrop_scale,
                                                     const C* __restrict__ dcarry, const C* __restrict__ drec,
                                                     const unsigned char* __restrict__ rdrop,
                                                     C* __restrict__ dcarry_out, S* __restrict__ da,
                                                     S* __restrict__ dn) {
  C dh_in, dc_in;
  lstm_incoming<C, PEEPHOLE_NONE>(b, j, H, H, rdrop_scale, dcarry, drec, rdrop, dh_in, dc_in);
  lstm_pass_through(b, j, H, dh_in, dc_in, dcarry_out, da);
  dn[b * H + j] = S(C(0));
}

// The LayerNorm LSTM's backward, unit (b, j) of an active item: its LSTMUnitGrad, tanh(n) and dn = dh∘o∘(1 − tanh²n).
template <typename S, typename C, bool CLIP, bool ZONEOUT>
__device__ __forceinline__ LSTMUnitGrad<C> lstm_ln_unit_grad(
    const int b, const int j, const int H, const C cell_clip, const C zoneout_h, const C zoneout_c,
    const C rdrop_scale, const S* __restrict__ gates, const C* __restrict__ c_prev, const C* __restrict__ c_next,
    const S* __restrict__ dy, const C* __restrict__ dcarry, const C* __restrict__ drec,
    const unsigned char* __restrict__ zone_h, const unsigned char* __restrict__ zone_c,
    const unsigned char* __restrict__ rdrop, const S* __restrict__ c_hat, const S* __restrict__ gamma_c,
    const S* __restrict__ beta_c, C& tn, C& dn) {
  C dh_in, dc_in;
  lstm_incoming<C, PEEPHOLE_NONE>(b, j, H, H, rdrop_scale, dcarry, drec, rdrop, dh_in, dc_in);
  const LSTMUnitGrad<C> u = lstm_unit_grad<S, C, CLIP, ZONEOUT>(b, j, H, cell_clip, zoneout_h, zoneout_c, dh_in,
                                                                dc_in, gates, c_prev, c_next, dy, zone_h, zone_c);
  tn = tanh(C(gamma_c[j]) * C(c_hat[b * H + j]) + C(beta_c[j]));
  dn = u.dh * u.o * (C(1) - tn * tn);
  return u;
}

// ... then its dc' and gates, given its row's mean(dĉ), mean(dĉ∘ĉ) (dĉ = γ_c∘dn) and r = 1/√(σ² + ε):
// lstm_ln_backward_step's second pass, and the persistent kernel's.  dn is recomputed rather than kept.
template <typename S, typename C, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
__device__ __forceinline__ void lstm_ln_backward_unit(
    const int b, const int j, const int H, const C cell_clip, const C zoneout_h, const C zoneout_c,
    const C rdrop_scale, const C mean_d, const C mean_dx, const C r, const S* __restrict__ gates,
    const C* __restrict__ c_prev, const C* __restrict__ c_next, const S* __restrict__ dy, const C* __restrict__ dcarry,
    const C* __restrict__ drec, C* __restrict__ dcarry_out, S* __restrict__ da,
    const unsigned char* __restrict__ zone_h, const unsigned char* __restrict__ zone_c,
    const unsigned char* __restrict__ rdrop, const S* __restrict__ c_hat, const S* __restrict__ gamma_c,
    const S* __restrict__ beta_c) {
  C tn, dn_j;
  const LSTMUnitGrad<C> u = lstm_ln_unit_grad<S, C, CLIP, ZONEOUT>(b, j, H, cell_clip, zoneout_h, zoneout_c,
                                                                   rdrop_scale, gates, c_prev, c_next, dy, dcarry,
                                                                   drec, zone_h, zone_c, rdrop, c_hat, gamma_c,
                                                                   beta_c, tn, dn_j);
  const C da_o = u.dh * tn * u.o * (C(1) - u.o);
  const C d_hat = C(gamma_c[j]) * dn_j;
  const C dc = u.dc_new + layer_norm_input_grad(d_hat, C(c_hat[b * H + j]), mean_d, mean_dx, r);
  lstm_gate_grads<S, C, PEEPHOLE_NONE, SIGMOID_CANDIDATE, CLIP>(b, j, H, cell_clip, u, dc, da_o, nullptr, dcarry_out,
                                                                da);
}

// lstm_backward_step with c' normalised (layer_norm): one block per item b, two passes over its units: dn and the
// row's Σγ_c∘dn and Σγ_c∘dn∘ĉ, then each unit's dc' and gates.  The second recomputes dn rather than keeping it.
template <typename S, typename C, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
__global__ void lstm_ln_backward_step(const int t, const int B, const int H, const C cell_clip, const C zoneout_h,
                                      const C zoneout_c, const C rdrop_scale,
                                      const S* __restrict__ gates,     // [B, 4H] i f g o
                                      const C* __restrict__ c_prev,    // [B, H]
                                      const C* __restrict__ c_next,    // [B, H]
                                      const S* __restrict__ dy,        // [B, H]
                                      const C* __restrict__ dcarry,    // [B, 2H]
                                      const C* __restrict__ drec,      // [B, H]
                                      C* __restrict__ dcarry_out,      // [B, 2H]
                                      S* __restrict__ da,              // [B, 4H]
                                      const unsigned char* __restrict__ zone_h,  // [B, H], or null
                                      const unsigned char* __restrict__ zone_c,  // [B, H], or null
                                      const unsigned char* __restrict__ rdrop,   // [B, H], or null
                                      const int* __restrict__ lengths, // [B], or null
                                      const S* __restrict__ c_hat,     // [B, H] ĉ
                                      const C* __restrict__ rstd_c,    // [B] 1/√(σ² + ε)
                                      const S* __restrict__ gamma_c,   // [H]
                                      const S* __restrict__ beta_c,    // [H]
                                      S* __restrict__ dn               // [B, H] d(γ_c∘ĉ + β_c), for γ_c's and β_c's
) {
  __shared__ C shared[LN_THREADS];
  const int b = blockIdx.x;
  if (!is_active(lengths, t, b)) {  // the whole block: one item
    for (int j = threadIdx.x; j < H; j += blockDim.x)
      lstm_ln_pass_through(b, j, H, rdrop_scale, dcarry, drec, rdrop, dcarry_out, da, dn);
    return;
  }
  C sum_d = C(0), sum_dx = C(0);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    C tn, dn_j;
    lstm_ln_unit_grad<S, C, CLIP, ZONEOUT>(b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, gates, c_prev,
                                           c_next, dy, dcarry, drec, zone_h, zone_c, rdrop, c_hat, gamma_c, beta_c, tn,
                                           dn_j);
    dn[b * H + j] = S(dn_j);
    const C d_hat = C(gamma_c[j]) * dn_j;
    sum_d += d_hat;
    sum_dx += d_hat * C(c_hat[b * H + j]);
  }
  const C mean_d = block_sum(sum_d, shared) / C(H), mean_dx = block_sum(sum_dx, shared) / C(H);
  for (int j = threadIdx.x; j < H; j += blockDim.x)
    lstm_ln_backward_unit<S, C, SIGMOID_CANDIDATE, CLIP, ZONEOUT>(
        b, j, H, cell_clip, zoneout_h, zoneout_c, rdrop_scale, mean_d, mean_dx, rstd_c[b], gates, c_prev, c_next, dy,
        dcarry, drec, dcarry_out, da, zone_h, zone_c, rdrop, c_hat, gamma_c, beta_c);
}
