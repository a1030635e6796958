// LSTM pointwise kernels, one step; CPU twin: rnncells/_numpy.py (lstm_*_step).
//
// forward, a = xw + hw split into a_i a_f a_g a_o (FULL adds c Wchᵀ to a_i a_f a_o, DIAGONAL the w_· terms):
//   i = σ(a_i + w_i∘c)   f = σ(a_f + w_f∘c)   g = tanh(a_g)   (σ(a_g) with SIGMOID_CANDIDATE)
//   c' = f∘c + i∘g       o = σ(a_o + w_o∘c')  h' = o∘tanh(c')
// h' is stored once, in y, which is also the next step's h: the states kept for backward are
// y and c (no second copy of h), so past an item's length its h reads as 0 (y is 0 there) and
// its last h' goes to h_last; c stays frozen.
// backward, dh = dh' + dy and dc = dc' (each arriving as pointwise part + GEMM part):
//   da_o = dh∘tanh(c')∘o(1−o)        dc += dh∘o∘(1 − tanh²c')  (+ w_o∘da_o)
//   da_i = dc∘g∘i(1−i)   da_f = dc∘c∘f(1−f)   da_g = dc∘i∘g'
//   dc_prev = dc∘f  (+ w_i∘da_i + w_f∘da_f)
// The recurrent GEMM's part of dh_prev (da Wrec) is added by the next step's kernel.
#include "common.cuh"

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool TRAINING>
__global__ void lstm_forward_step(const int t, const int B, const int H,
                                  const S* __restrict__ xw,        // [B, 4H] x Wihᵀ + biases, this step
                                  const S* __restrict__ hw,        // [B, 4H] h Whhᵀ
                                  const S* __restrict__ cw,        // [B, 3H] c Wchᵀ (i f o) when FULL
                                  const S* __restrict__ c_prev,    // [B, H] c before the step
                                  S* __restrict__ c_next,          // [B, H] c after it
                                  S* __restrict__ y,               // [B, H] h', also the next step's h
                                  S* __restrict__ h_last,          // [B, H] h' of each item's last step, or null
                                  S* __restrict__ gates,           // [B, 4H] i f g o, saved when TRAINING
                                  const S* __restrict__ w_peep,    // [3H] w_i w_f w_o when DIAGONAL
                                  const int* __restrict__ lengths  // [B], or null: every item runs
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 4 * H + j;  // a_i of (b, j) in [B, 4H]
  const C c = C(c_prev[idx]);
  C a_i = C(xw[a]) + C(hw[a]);
  C a_f = C(xw[a + H]) + C(hw[a + H]);
  const C a_g = C(xw[a + 2 * H]) + C(hw[a + 2 * H]);
  C a_o = C(xw[a + 3 * H]) + C(hw[a + 3 * H]);
  if constexpr (PEEPHOLE == PEEPHOLE_FULL) {
    const int p = b * 3 * H + j;
    a_i += C(cw[p]);
    a_f += C(cw[p + H]);
    a_o += C(cw[p + 2 * H]);
  }
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) {
    a_i += C(w_peep[j]) * c;
    a_f += C(w_peep[H + j]) * c;
  }
  const C i = sigmoid(a_i), f = sigmoid(a_f), g = candidate<SIGMOID_CANDIDATE>(a_g);
  const C c1 = f * c + i * g;
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) a_o += C(w_peep[2 * H + j]) * c1;
  const C o = sigmoid(a_o);
  const C h1 = o * tanh(c1);
  if constexpr (TRAINING) {
    gates[a] = S(i);
    gates[a + H] = S(f);
    gates[a + 2 * H] = S(g);
    gates[a + 3 * H] = S(o);
  }
  const bool active = is_active(lengths, t, b);
  c_next[idx] = active ? S(c1) : c_prev[idx];
  y[idx] = active ? S(h1) : S(0);
  if (h_last != nullptr && active) h_last[idx] = S(h1);
}

template <typename S, typename C, int PEEPHOLE, bool SIGMOID_CANDIDATE>
__global__ void lstm_backward_step(const int t, const int B, const int H, const int n_rec,
                                   const S* __restrict__ gates,     // [B, 4H] i f g o
                                   const S* __restrict__ c_prev,    // [B, H] c before the step
                                   const S* __restrict__ c_next,    // [B, H] c after it
                                   const S* __restrict__ dy,        // [B, H]
                                   const S* __restrict__ dpw,       // [B, 2H] d[h | c]', pointwise part
                                   const S* __restrict__ dmm,       // [B, n_rec] d[h | c]', GEMM part
                                   S* __restrict__ dpw_out,         // [B, 2H] d[h | c], pointwise part
                                   S* __restrict__ da,              // [B, 4H] d(pre-activations)
                                   const S* __restrict__ w_peep,    // [3H] when DIAGONAL
                                   const int* __restrict__ lengths  // [B] or null
) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int b = idx / H, j = idx % H;
  const int a = b * 4 * H + j, s = b * 2 * H + j, m = b * n_rec + j;
  const C dh_in = C(dpw[s]) + C(dmm[m]);
  C dc_in = C(dpw[s + H]);
  if constexpr (PEEPHOLE == PEEPHOLE_FULL) dc_in += C(dmm[m + H]);
  if (!is_active(lengths, t, b)) {  // past its length: the gradient passes through unchanged
    dpw_out[s] = S(dh_in);
    dpw_out[s + H] = S(dc_in);
    da[a] = da[a + H] = da[a + 2 * H] = da[a + 3 * H] = S(0);
    return;
  }
  const C i = C(gates[a]), f = C(gates[a + H]), g = C(gates[a + 2 * H]), o = C(gates[a + 3 * H]);
  const C c = C(c_prev[idx]), tc = tanh(C(c_next[idx]));
  const C dh = dh_in + C(dy[idx]);
  const C da_o = dh * tc * o * (C(1) - o);
  C dc = dc_in + dh * o * (C(1) - tc * tc);
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) dc += C(w_peep[2 * H + j]) * da_o;
  const C da_i = dc * g * i * (C(1) - i);
  const C da_f = dc * c * f * (C(1) - f);
  const C da_g = dc * i * candidate_grad<SIGMOID_CANDIDATE>(g);
  C dc_prev = dc * f;
  if constexpr (PEEPHOLE == PEEPHOLE_DIAGONAL) dc_prev += C(w_peep[j]) * da_i + C(w_peep[H + j]) * da_f;
  da[a] = S(da_i);
  da[a + H] = S(da_f);
  da[a + 2 * H] = S(da_g);
  da[a + 3 * H] = S(da_o);
  dpw_out[s] = S(0);  // dh_prev is all GEMM: the next kernel adds da Wrec
  dpw_out[s + H] = S(dc_prev);
}
