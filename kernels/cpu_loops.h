// The step loops of rnncells/_sequence.py in C++: a whole sequence in one call on the CPU.
//
// From Python, each step of a loop costs a GEMM call and a step function, microseconds of interpreter
// work where a small step computes in well under one.  Here the same loops run the kernels of this
// folder (with host.h's execution model, inlined) between calls to the process's BLAS, so the
// interpreter is paid once per sequence.  Each loop is the twin of the Python function of the same
// name and takes its buffers in the order of its comment; the GEMMs are those of the Python loop:
//   forward   hw = h Whhᵀ (FULL: cw = c Wchᵀ); lstm_forward_step          GRU: gh = h Whhᵀ; gru_forward_step
//             GRU reset before: ghrz = h Whh_rzᵀ; gru_rz_step; ghn = (r∘h) Whnᵀ; gru_n_step
//   backward  lstm_backward_step; drec = da Wrec                          GRU: gru_backward_step; drec = dgh Whh
//             GRU reset before: gru_n_backward_step; drh = da_n Whn; gru_rz_backward_step; drec = da_rz Whh_rz
//   GRU with layer_norm: forward gh = h Whhᵀ; layer_norm_forward(gh); gru_forward_step
//             backward gru_backward_step; layer_norm_backward(dgh); drec = dgh_raw Whh
//   LSTM with layer_norm: forward hw = h Whhᵀ; layer_norm_forward(hw); lstm_ln_forward_step
//             backward lstm_ln_backward_step; layer_norm_backward(da); drec = da_raw Whh
//   projected LSTM (proj_size): forward hw = h Whhᵀ (FULL: cw); lstm_forward_step; y = h' Whrᵀ
//             backward dh += da' Whh; drec_h = dh Whr; lstm_backward_step (FULL: drec_c = da Wch)
// S = C (float or double): half storage stays on the NumPy backend.
#pragma once
#include <cstdint>

#include "host.h"
#include "lstm.cu"
#include "gru.cu"
#include "layernorm.cu"

// The row-major GEMM and GEMV of the process's BLAS (cblas_?gemm, cblas_?gemv), with 32- or 64-bit ints (ILP64).
struct Blas {
  void* gemm;
  void* gemv;
  int ilp64;
};
template <> struct ctype<Blas> { static constexpr const char* name = "Blas"; };  // for signature()

template <typename I, typename S>
using cblas_gemm = void (*)(int order, int trans_a, int trans_b, I m, I n, I k, S alpha, const S* a, I lda,
                            const S* b, I ldb, S beta, S* c, I ldc);
template <typename I, typename S>
using cblas_gemv = void (*)(int order, int trans, I m, I n, S alpha, const S* a, I lda, const S* x, I incx, S beta,
                            S* y, I incy);

template <typename I, typename S>
void gemm_as(const Blas blas, bool trans_w, int M, int N, int K, const S* a, int lda, const S* w, int ldw, S* out,
             int ldo, S beta) {
  constexpr int ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112;
  if (M <= 2) {  // one GEMV per row: GEMM would copy (pack) all of w first, 3x slower for one row of 256
    for (int m = 0; m < M; ++m)
      reinterpret_cast<cblas_gemv<I, S>>(blas.gemv)(ROW_MAJOR, trans_w ? NO_TRANS : TRANS, trans_w ? N : K,
                                                    trans_w ? K : N, S(1), w, ldw, a + std::ptrdiff_t(m) * lda, 1,
                                                    beta, out + std::ptrdiff_t(m) * ldo, 1);
  } else {
    reinterpret_cast<cblas_gemm<I, S>>(blas.gemm)(ROW_MAJOR, NO_TRANS, trans_w ? TRANS : NO_TRANS, M, N, K, S(1), a,
                                                  lda, w, ldw, beta, out, ldo);
  }
}

// out [M, N] (row stride ldo) = a [M, K] (row stride lda) · b, b being w [N, K]ᵀ (trans_w) or w [K, N]; out += a · b
// with accumulate.
template <typename S>
void gemm(const Blas blas, bool trans_w, int M, int N, int K, const S* a, int lda, const S* w, int ldw, S* out,
          int ldo, bool accumulate = false) {
  if (M == 0 || N == 0) return;
  const S beta = accumulate ? S(1) : S(0);
  if (blas.ilp64) gemm_as<std::int64_t>(blas, trans_w, M, N, K, a, lda, w, ldw, out, ldo, beta);
  else gemm_as<int>(blas, trans_w, M, N, K, a, lda, w, ldw, out, ldo, beta);
}

// A kernel's grid over n = B·H elements, one block, inlined: the kernels ignore blockDim's CUDA limit.
template <typename... P, typename... A>
void run(void (*kernel)(P...), int n, A... args) {
  blockIdx = {0, 0, 0};
  blockDim = gridDim = {unsigned(n), 1, 1};
  for (int k = 0; k < n; ++k) {
    threadIdx.x = unsigned(k);
    kernel(args...);
  }
}

// A row kernel's grid (layernorm.cu, lstm_ln_*_step), one block per row, each block one thread: its barriers then
// hold nothing (host.h's __syncthreads for a lone thread) and its sums run in row order.
template <typename... P, typename... A>
void run_rows(void (*kernel)(P...), int rows, A... args) {
  threadIdx = {0, 0, 0};
  blockDim = {1, 1, 1};
  gridDim = {unsigned(rows), 1, 1};
  for (int r = 0; r < rows; ++r) {
    blockIdx = {unsigned(r), 0, 0};
    kernel(args...);
  }
}

using Size = std::ptrdiff_t;  // offsets of a step within a [T, B, ·] buffer may pass 2^31

// A step's zoneout mask [B, H] within [T, B, H] masks, or null.
inline const unsigned char* step_mask(const unsigned char* masks, int t, std::ptrdiff_t BH) {
  return masks == nullptr ? nullptr : masks + t * BH;
}

// lstm_forward_steps: cell_clip (CLIP), zoneout_h, zoneout_c (ZONEOUT), rdrop_scale, xw [T, B, 4H], h0 [B, H],
// c0 [B, H], w_hh [4H, H], w_ch [3H, H] (FULL), w_peep [3H] (DIAGONAL), zone_h, zone_c [T, B, H] or null, rdrop
// [B, H] or null, lengths [B] or null; y [T, B, H], cs [T, B, H] (inference: [2, B, H] ping-pong), gates
// [T, B, 4H] (TRAINING), h_last [B, H] or null; hw [B, 4H], cw [B, 3H] (FULL), h_drop [B, H] (rdrop: d∘h, the
// GEMM's input, holding d∘h0 at the start); layer_norm (no peephole): ε, the gain ln_h [4H] (null without), c's gain
// gamma_c and shift beta_c [H], and, when TRAINING, h_hat [T, B, 4H], rstd_h [T, B], c_hat [T, B, H], rstd_c [T, B].
template <typename S, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
void lstm_forward_steps(const Blas blas, int T, int B, int H, S cell_clip, S zoneout_h, S zoneout_c, S rdrop_scale,
                        const S* xw, const S* h0, const S* c0, const S* w_hh, const S* w_ch, const S* w_peep,
                        const unsigned char* zone_h, const unsigned char* zone_c, const unsigned char* rdrop,
                        const int* lengths, S* y, S* cs, S* gates, S* h_last, S* hw, S* cw, S* h_drop, S eps,
                        const S* ln_h, const S* gamma_c, const S* beta_c, S* h_hat, S* rstd_h, S* c_hat, S* rstd_c) {
  const Size BH = Size(B) * H;
  for (int t = 0; t < T; ++t) {
    const Size s = TRAINING ? t : t % 2, prev = TRAINING ? t - 1 : (t + 1) % 2;
    const S* c = t == 0 ? c0 : cs + prev * BH;
    const S* h = t == 0 ? h0 : y + (t - 1) * BH;
    gemm(blas, true, B, 4 * H, H, rdrop != nullptr ? h_drop : h, H, w_hh, H, hw, 4 * H);
    if (PEEPHOLE == PEEPHOLE_FULL) gemm(blas, true, B, 3 * H, H, c, H, w_ch, H, cw, 3 * H);
    S* gates_t = TRAINING ? gates + t * 4 * BH : nullptr;
    if constexpr (PEEPHOLE == PEEPHOLE_NONE) {
      if (ln_h != nullptr) {
        run_rows(layer_norm_forward<S, S>, B, 4 * H, eps, hw, ln_h, static_cast<const S*>(nullptr),
                 TRAINING ? h_hat + t * 4 * BH : nullptr, TRAINING ? rstd_h + Size(t) * B : nullptr);
        run_rows(lstm_ln_forward_step<S, S, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>, B, t, B, H,
                 cell_clip, zoneout_h, zoneout_c, rdrop_scale, eps, xw + t * 4 * BH, hw, h, c, cs + s * BH,
                 y + t * BH, h_last, gates_t, step_mask(zone_h, t, BH), step_mask(zone_c, t, BH), rdrop, h_drop,
                 lengths, gamma_c, beta_c, TRAINING ? c_hat + t * BH : nullptr,
                 TRAINING ? rstd_c + Size(t) * B : nullptr);
        continue;
      }
    }
    run(lstm_forward_step<S, S, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>, B * H, t, B, H, cell_clip,
        zoneout_h, zoneout_c, rdrop_scale, xw + t * 4 * BH, hw, cw, h, c, cs + s * BH, y + t * BH, h_last, gates_t,
        w_peep, step_mask(zone_h, t, BH), step_mask(zone_c, t, BH), rdrop, h_drop, lengths);
  }
}

// lstm_backward_steps: cell_clip, zoneout_h, zoneout_c, rdrop_scale as above, gates [T, B, 4H], c0 [B, H],
// cs [T, B, H], dy [T, B, H], w_rec [4H, n_rec], w_peep [3H] (DIAGONAL), zone_h, zone_c [T, B, H] or null, rdrop
// [B, H] or null, lengths [B] or null; dcarry [2, B, 2H], drec [2, B, n_rec] (ping-pong, row T % 2 holding dhT,
// dcT and 0), da [T, B, 4H]; layer_norm (no peephole): c_hat [T, B, H], rstd_c [T, B], gamma_c, beta_c [H], h_hat
// [T, B, 4H], rstd_h [T, B], ln_h [4H] (null without); dn [T, B, H] d(γ_c∘ĉ + β_c), da_raw [T, B, 4H] the gradient
// of h Whhᵀ before its normalisation.
template <typename S, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
void lstm_backward_steps(const Blas blas, int T, int B, int H, S cell_clip, S zoneout_h, S zoneout_c, S rdrop_scale,
                         int n_rec, const S* gates, const S* c0, const S* cs, const S* dy, const S* w_rec,
                         const S* w_peep, const unsigned char* zone_h, const unsigned char* zone_c,
                         const unsigned char* rdrop, const int* lengths, S* dcarry, S* drec, S* da, const S* c_hat,
                         const S* rstd_c, const S* gamma_c, const S* beta_c, const S* h_hat, const S* rstd_h,
                         const S* ln_h, S* dn, S* da_raw) {
  const Size BH = Size(B) * H;
  for (int t = T - 1; t >= 0; --t) {
    const Size nxt = (t + 1) % 2, cur = t % 2;
    const S* c = t == 0 ? c0 : cs + (t - 1) * BH;
    S* da_t = da + t * 4 * BH;
    if constexpr (PEEPHOLE == PEEPHOLE_NONE) {
      if (ln_h != nullptr) {
        run_rows(lstm_ln_backward_step<S, S, SIGMOID_CANDIDATE, CLIP, ZONEOUT>, B, t, B, H, cell_clip,
                 zoneout_h, zoneout_c, rdrop_scale, gates + t * 4 * BH, c, cs + t * BH, dy + t * BH,
                 dcarry + nxt * 2 * BH, drec + nxt * BH, dcarry + cur * 2 * BH, da_t, step_mask(zone_h, t, BH),
                 step_mask(zone_c, t, BH), rdrop, lengths, c_hat + t * BH, rstd_c + Size(t) * B, gamma_c, beta_c,
                 dn + t * BH);
        run_rows(layer_norm_backward<S, S>, B, 4 * H, da_t, h_hat + t * 4 * BH, rstd_h + Size(t) * B, ln_h,
                 da_raw + t * 4 * BH);
        gemm(blas, false, B, H, 4 * H, da_raw + t * 4 * BH, 4 * H, w_rec, H, drec + cur * BH, H);
        continue;
      }
    }
    run(lstm_backward_step<S, S, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT>, B * H, t, B, H, cell_clip, zoneout_h,
        zoneout_c, rdrop_scale, n_rec, gates + t * 4 * BH, c, cs + t * BH, dy + t * BH, dcarry + nxt * 2 * BH,
        drec + nxt * B * n_rec, dcarry + cur * 2 * BH, da_t, w_peep, step_mask(zone_h, t, BH),
        step_mask(zone_c, t, BH), rdrop, lengths);
    gemm(blas, false, B, n_rec, 4 * H, da_t, 4 * H, w_rec, n_rec, drec + cur * B * n_rec, n_rec);
  }
}

// projected_lstm_forward_steps: lstm_forward_steps with proj_size P (neither zoneout of h nor recurrent dropout):
// h0 [B, P], w_hh [4H, P], w_hr [P, H]; y [T, B, P]; ms [T, B, H] (inference: [1, B, H]) the kernel's h', which a
// GEMM projects into y[t].
template <typename S, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT, bool TRAINING>
void projected_lstm_forward_steps(const Blas blas, int T, int B, int H, int P, S cell_clip, S zoneout_h, S zoneout_c,
                                  S rdrop_scale, const S* xw, const S* h0, const S* c0, const S* w_hh, const S* w_ch,
                                  const S* w_peep, const S* w_hr, const unsigned char* zone_c, const int* lengths,
                                  S* y, S* cs, S* gates, S* ms, S* hw, S* cw) {
  using Mask = const unsigned char*;
  const Size BH = Size(B) * H, BP = Size(B) * P;
  for (int t = 0; t < T; ++t) {
    const Size s = TRAINING ? t : t % 2, prev = TRAINING ? t - 1 : (t + 1) % 2;
    const S* c = t == 0 ? c0 : cs + prev * BH;
    S* m = ms + (TRAINING ? t * BH : 0);
    gemm(blas, true, B, 4 * H, P, t == 0 ? h0 : y + (t - 1) * BP, P, w_hh, P, hw, 4 * H);
    if (PEEPHOLE == PEEPHOLE_FULL) gemm(blas, true, B, 3 * H, H, c, H, w_ch, H, cw, 3 * H);
    run(lstm_forward_step<S, S, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT, TRAINING>, B * H, t, B, H, cell_clip,
        zoneout_h, zoneout_c, rdrop_scale, xw + t * 4 * BH, hw, cw, static_cast<const S*>(nullptr), c, cs + s * BH, m,
        static_cast<S*>(nullptr), TRAINING ? gates + t * 4 * BH : nullptr, w_peep, Mask(nullptr),
        step_mask(zone_c, t, BH), Mask(nullptr), static_cast<S*>(nullptr), lengths);
    gemm(blas, true, B, P, H, m, H, w_hr, H, y + t * BP, P);
  }
}

// projected_lstm_backward_steps: lstm_backward_steps with proj_size P: w_hh [4H, P], w_hr [P, H], w_rec [4H, H]
// ([Wch] alone, FULL) or null; dhp [T, B, P] each step's dh, holding dy (and dhT) on entry, to which the loop adds
// da' Whh before projecting it back into drec's dh part (no dy of the kernel's own).
template <typename S, int PEEPHOLE, bool SIGMOID_CANDIDATE, bool CLIP, bool ZONEOUT>
void projected_lstm_backward_steps(const Blas blas, int T, int B, int H, int P, S cell_clip, S zoneout_h, S zoneout_c,
                                   S rdrop_scale, int n_rec, const S* gates, const S* c0, const S* cs, const S* w_hh,
                                   const S* w_hr, const S* w_rec, const S* w_peep, const unsigned char* zone_c,
                                   const int* lengths, S* dhp, S* dcarry, S* drec, S* da) {
  using Mask = const unsigned char*;
  const Size BH = Size(B) * H, BP = Size(B) * P;
  for (int t = T - 1; t >= 0; --t) {
    const Size nxt = (t + 1) % 2, cur = t % 2;
    if (t + 1 < T) gemm(blas, false, B, P, 4 * H, da + (t + 1) * 4 * BH, 4 * H, w_hh, P, dhp + t * BP, P, true);
    gemm(blas, false, B, H, P, dhp + t * BP, P, w_hr, H, drec + nxt * B * n_rec, n_rec);
    run(lstm_backward_step<S, S, PEEPHOLE, SIGMOID_CANDIDATE, CLIP, ZONEOUT>, B * H, t, B, H, cell_clip, zoneout_h,
        zoneout_c, rdrop_scale, n_rec, gates + t * 4 * BH, t == 0 ? c0 : cs + (t - 1) * BH, cs + t * BH,
        static_cast<const S*>(nullptr), dcarry + nxt * 2 * BH, drec + nxt * B * n_rec, dcarry + cur * 2 * BH,
        da + t * 4 * BH, w_peep, Mask(nullptr), step_mask(zone_c, t, BH), Mask(nullptr), lengths);
    if (PEEPHOLE == PEEPHOLE_FULL)
      gemm(blas, false, B, H, 4 * H, da + t * 4 * BH, 4 * H, w_rec, H, drec + cur * B * n_rec + H, n_rec);
  }
}

// gru_forward_steps: zoneout_h (ZONEOUT), rdrop_scale, xw [T, B, 3H], h0 [B, H], w_hh [3H, H], b_hn [H] (RESET_AFTER),
// zone_h [T, B, H] or null, rdrop [B, H] or null, lengths [B] or null; y [T, B, H],
// gates [T, B, 4H] (RESET_AFTER, TRAINING) or [T, B, 3H] (reset before; inference: [1, B, 3H]), rh [T or 1, B, H]
// (reset before), h_last [B, H] or null; gh [B, 3H] (RESET_AFTER), or ghrz [B, 2H] and ghn [B, H]; h_drop [B, H]
// (rdrop: d∘h, the GEMMs' input, holding d∘h0 at the start); layer_norm (RESET_AFTER): ε, its gain ln_h [3H] (null
// without), and, when TRAINING, h_hat [T, B, 3H] and rstd_h [T, B] kept.
template <typename S, bool RESET_AFTER, bool ZONEOUT, bool TRAINING>
void gru_forward_steps(const Blas blas, int T, int B, int H, S zoneout_h, S rdrop_scale, const S* xw, const S* h0,
                       const S* w_hh, const S* b_hn, const unsigned char* zone_h, const unsigned char* rdrop,
                       const int* lengths, S* y, S* gates, S* rh, S* h_last, S* gh, S* ghrz, S* ghn, S* h_drop,
                       S eps, const S* ln_h, S* h_hat, S* rstd_h) {
  const Size BH = Size(B) * H;
  for (int t = 0; t < T; ++t) {
    const S* h = t == 0 ? h0 : y + (t - 1) * BH;
    const S* h_in = rdrop != nullptr ? h_drop : h;  // what the GEMMs (and r∘h) read
    if (RESET_AFTER) {
      gemm(blas, true, B, 3 * H, H, h_in, H, w_hh, H, gh, 3 * H);
      if (ln_h != nullptr)
        run_rows(layer_norm_forward<S, S>, B, 3 * H, eps, gh, ln_h, static_cast<const S*>(nullptr),
                 TRAINING ? h_hat + t * 3 * BH : nullptr, TRAINING ? rstd_h + Size(t) * B : nullptr);
      run(gru_forward_step<S, S, ZONEOUT, TRAINING>, B * H, t, B, H, zoneout_h, rdrop_scale, xw + t * 3 * BH, gh,
          b_hn, h, y + t * BH, h_last, TRAINING ? gates + t * 4 * BH : nullptr, step_mask(zone_h, t, BH), rdrop,
          h_drop, lengths);
    } else {
      const Size s = TRAINING ? t : 0;
      gemm(blas, true, B, 2 * H, H, h_in, H, w_hh, H, ghrz, 2 * H);
      run(gru_rz_step<S, S>, B * H, B, H, xw + t * 3 * BH, ghrz, h_in, gates + s * 3 * BH, rh + s * BH);
      gemm(blas, true, B, H, H, rh + s * BH, H, w_hh + Size(2) * H * H, H, ghn, H);
      run(gru_n_step<S, S, ZONEOUT>, B * H, t, B, H, zoneout_h, rdrop_scale, xw + t * 3 * BH, ghn, h, y + t * BH,
          h_last, gates + s * 3 * BH, step_mask(zone_h, t, BH), rdrop, h_drop, lengths);
    }
  }
}

// gru_backward_steps: zoneout_h (ZONEOUT), rdrop_scale, gates [T, B, 4H] (RESET_AFTER) or [T, B, 3H], h0 [B, H],
// y [T, B, H], h_drops [T, B, H] (rdrop: each step's d∘h) or null, dy [T, B, H], w_hh [3H, H], zone_h [T, B, H] or
// null, rdrop [B, H] or null, lengths [B] or null; dcarry, drec [2, B, H] (ping-pong, row T % 2 holding dhT and 0),
// dg [T, B, 3H], dgh [T, B, 3H] (RESET_AFTER), drh [B, H] (reset before); layer_norm: h_hat [T, B, 3H], rstd_h
// [T, B], ln_h [3H] (null without), dgh_raw [T, B, 3H] the gradient of h Whhᵀ before its normalisation.
template <typename S, bool RESET_AFTER, bool ZONEOUT>
void gru_backward_steps(const Blas blas, int T, int B, int H, S zoneout_h, S rdrop_scale, const S* gates,
                        const S* h0, const S* y, const S* h_drops, const S* dy, const S* w_hh,
                        const unsigned char* zone_h, const unsigned char* rdrop, const int* lengths, S* dcarry,
                        S* drec, S* dg, S* dgh, S* drh, const S* h_hat, const S* rstd_h, const S* ln_h, S* dgh_raw) {
  const Size BH = Size(B) * H;
  for (int t = T - 1; t >= 0; --t) {
    const Size nxt = (t + 1) % 2, cur = t % 2;
    const S* h = t == 0 ? h0 : y + (t - 1) * BH;
    S* dg_t = dg + t * 3 * BH;
    if (RESET_AFTER) {
      run(gru_backward_step<S, S, ZONEOUT>, B * H, t, B, H, zoneout_h, rdrop_scale, gates + t * 4 * BH, h,
          dy + t * BH, dcarry + nxt * BH, drec + nxt * BH, dcarry + cur * BH, dg_t, dgh + t * 3 * BH,
          step_mask(zone_h, t, BH), rdrop, lengths);
      const S* d_gh = dgh + t * 3 * BH;
      if (ln_h != nullptr) {
        run_rows(layer_norm_backward<S, S>, B, 3 * H, d_gh, h_hat + t * 3 * BH, rstd_h + Size(t) * B, ln_h,
                 dgh_raw + t * 3 * BH);
        d_gh = dgh_raw + t * 3 * BH;
      }
      gemm(blas, false, B, H, 3 * H, d_gh, 3 * H, w_hh, H, drec + cur * BH, H);
    } else {
      const S* gates_t = gates + t * 3 * BH;
      run(gru_n_backward_step<S, S, ZONEOUT>, B * H, t, B, H, zoneout_h, rdrop_scale, gates_t, h, dy + t * BH,
          dcarry + nxt * BH, drec + nxt * BH, dcarry + cur * BH, dg_t, step_mask(zone_h, t, BH), rdrop, lengths);
      gemm(blas, false, B, H, H, dg_t + 2 * H, 3 * H, w_hh + Size(2) * H * H, H, drh, H);
      run(gru_rz_backward_step<S, S>, B * H, t, B, H, rdrop_scale, gates_t, rdrop != nullptr ? h_drops + t * BH : h,
          drh, dcarry + cur * BH, dg_t, rdrop, lengths);
      gemm(blas, false, B, H, 2 * H, dg_t, 3 * H, w_hh, H, drec + cur * BH, H);
    }
  }
}


// Call f with its arguments unpacked from `args`, the packed convention of host.h's launch.
template <typename... A>
void call(void (*f)(A...), void** args) {
  call_packed(f, args, std::index_sequence_for<A...>{});
}
