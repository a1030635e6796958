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
#include "common.cuh"

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
  const int b = state_idx / H, j = state_idx % H;
  const int i_idx = b * 4 * H + j, f_idx = i_idx + H, g_idx = i_idx + 2 * H, o_idx = i_idx + 3 * H;  // in [B, 4H]
  const C c = c_prev[state_idx];
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
  const C i = sigmoid(a_i), f = sigmoid(a_f), g = candidate<SIGMOID_CANDIDATE>(a_g);
  C c1 = f * c + i * g;
  if constexpr (CLIP) c1 = clip(c1, cell_clip);
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) a_o += C(w_peep[2 * H + j]) * c1;
  const C o = sigmoid(a_o);
  C h1 = o * tanh(c1);
  if constexpr (ZONEOUT) {
    h1 = zone(zone_h, state_idx, zoneout_h, h_prev, h1);
    c1 = zone(zone_c, state_idx, zoneout_c, c_prev, c1);
  }
  if constexpr (TRAINING) {
    gates[i_idx] = S(i);
    gates[f_idx] = S(f);
    gates[g_idx] = S(g);
    gates[o_idx] = S(o);
  }
  const bool active = is_active(lengths, t, b);
  c_next[state_idx] = active ? c1 : c;
  const S y1 = active ? S(h1) : S(C(0));
  y[state_idx] = y1;
  if (rdrop != nullptr) h_drop[state_idx] = S(C(y1) * kept(rdrop, state_idx, rdrop_scale));
  if (h_last != nullptr && active) h_last[state_idx] = S(h1);
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
  const int b = state_idx / H, j = state_idx % H;
  const int i_idx = b * 4 * H + j, f_idx = i_idx + H, g_idx = i_idx + 2 * H, o_idx = i_idx + 3 * H;  // in [B, 4H]
  const int dh_idx = b * 2 * H + j, dc_idx = dh_idx + H;  // in [B, 2H]
  const int drec_h_idx = b * n_rec + j;                    // in [B, n_rec]; dc follows dh when FULL
  const C dh_in = dcarry[dh_idx] + drec[drec_h_idx] * kept(rdrop, state_idx, rdrop_scale);
  C dc_in = dcarry[dc_idx];
  if constexpr (PEEPHOLE == PEEPHOLE_FULL) dc_in += drec[drec_h_idx + H];
  if (!is_active(lengths, t, b)) {  // past its length: the gradient passes through unchanged
    dcarry_out[dh_idx] = dh_in;
    dcarry_out[dc_idx] = dc_in;
    da[i_idx] = da[f_idx] = da[g_idx] = da[o_idx] = S(C(0));
    return;
  }
  const C i = C(gates[i_idx]), f = C(gates[f_idx]), g = C(gates[g_idx]), o = C(gates[o_idx]);
  const C c = c_prev[state_idx];
  C c1 = c_next[state_idx];  // c' itself; with zoneout the state kept is c' zoned out, so c' is recomputed
  C dh = dy != nullptr ? dh_in + C(dy[state_idx]) : dh_in, dh_prev = C(0), dc_zoned = C(0);
  if constexpr (ZONEOUT) {
    c1 = f * c + i * g;
    if constexpr (CLIP) c1 = clip(c1, cell_clip);
    zone_grad(zone_h, state_idx, zoneout_h, dh, dh_prev, dh);
    zone_grad(zone_c, state_idx, zoneout_c, dc_in, dc_zoned, dc_in);
  }
  const C tc = tanh(c1);
  const C da_o = dh * tc * o * (C(1) - o);
  C dc = dc_in + dh * o * (C(1) - tc * tc);
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) dc += C(w_peep[2 * H + j]) * da_o;
  if constexpr (CLIP) {  // a clipped c' is exactly ±cell_clip (c is kept in C); a NaN c' passes its gradient on
    if (fabs(c1) >= cell_clip) dc = C(0);
  }
  const C da_i = dc * g * i * (C(1) - i);
  const C da_f = dc * c * f * (C(1) - f);
  const C da_g = dc * i * candidate_grad<SIGMOID_CANDIDATE>(g);
  C dc_prev = dc * f + dc_zoned;
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) dc_prev += C(w_peep[j]) * da_i + C(w_peep[H + j]) * da_f;
  da[i_idx] = S(da_i);
  da[f_idx] = S(da_f);
  da[g_idx] = S(da_g);
  da[o_idx] = S(da_o);
  dcarry_out[dh_idx] = dh_prev;  // zoneout's part (0 without): the next kernel adds the GEMM's, da Wrec
  dcarry_out[dc_idx] = dc_prev;
}
