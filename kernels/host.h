// The CUDA execution model on the host, enough for the kernels in this folder:
// g++ builds an unchanged .cu into a shared library, and `launch` runs a kernel's
// grid one thread at a time.  That is exact for kernels whose threads share
// nothing (no __shared__, no __syncthreads, no warp intrinsics): the cells'
// but the LayerNorm LSTM's.  The kernels whose block's threads meet at
// __syncthreads() over __shared__ memory (layernorm.cu, lstm.cu's
// lstm_ln_*_step) run with `launch_blocks`: a block's threads are fibers
// that take turns from barrier to barrier, so a barrier holds every thread
// until all have reached it, as on a GPU, and a missing one shows as a wrong
// result on every run.  The persistent kernels (persistent.cu), whose blocks
// also meet at grid_sync(), run with `launch_cooperative`: every thread of
// every block a fiber at once, each block with its own dynamic shared memory,
// NaN-filled at the launch (a GPU's holds whatever was there before).
// Tolerances must still allow for FMA contraction and libm-vs-CUDA math.
// __half and __nv_bfloat16 are storage types here, as the kernels use them:
// conversions to and from float, rounding to nearest even as CUDA's do.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <ucontext.h>

using std::exp;
using std::fabs;
using std::max;
using std::min;
using std::sqrt;

// CUDA's tanhf is its own; glibc's goes through expm1f and takes ~15 ns, this ~7: tanh of a float through one
// double exp, rounded once (equal to float(tanh(double(x))) on every 97th of the 2^32 float patterns).  Below
// 2^-12, tanh x = x to float precision and (e − 1) would cancel; beyond 9.1 it rounds to ±1; NaN stays NaN.
inline float tanh(const float x) {
  if (std::fabs(x) < 0x1p-12f) return x;
  if (std::fabs(x) > 9.1f) return std::copysign(1.0f, x);
  const double e = std::exp(2.0 * double(x));
  return float((e - 1.0) / (e + 1.0));
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static  // one block runs at a time (launch_blocks), so a kernel's static is its block's memory
                           // (a cooperative launch runs blocks at once: its kernels use dynamic shared memory)

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// bfloat16: a float's top 16 bits (8 exponent bits, 7 mantissa bits), the dropped 16 rounded to nearest even.
struct __nv_bfloat16 {
  std::uint16_t bits;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) {
    const std::uint32_t u = float_bits(f);
    if (std::isnan(f)) bits = std::uint16_t((u >> 16) | 0x40);  // stays a (quiet) NaN
    else bits = std::uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);  // a carry may reach inf: right
  }
  operator float() const { return bits_float(std::uint32_t(bits) << 16); }
};

// IEEE binary16: 5 exponent bits (bias 15), 10 mantissa bits; below 2^-14 subnormal, from 65520 on inf.
struct __half {
  std::uint16_t bits;
  __half() = default;
  __half(float f) {
    const std::uint32_t u = float_bits(f), sign = (u >> 16) & 0x8000u, mag = u & 0x7FFFFFFFu;
    if (mag > 0x7F800000u) bits = std::uint16_t(sign | 0x7E00u);                // NaN
    else if (mag >= 0x477FF000u) bits = std::uint16_t(sign | 0x7C00u);          // ±inf, or rounds to it
    else if (mag >= 0x38800000u) {                                              // normal: rebias, round 13 bits
      const std::uint32_t m = mag - ((127u - 15u) << 23);
      bits = std::uint16_t(sign | ((m + 0xFFFu + ((m >> 13) & 1u)) >> 13));
    } else {  // subnormal or zero: a count of 2^-24, exact in float, rounded to nearest even by nearbyint
      bits = std::uint16_t(sign | std::uint32_t(std::nearbyint(std::fabs(f) * 16777216.0f)));
    }
  }
  operator float() const {
    const std::uint32_t sign = std::uint32_t(bits & 0x8000u) << 16, e = (bits >> 10) & 0x1Fu, m = bits & 0x3FFu;
    if (e == 0) {
      const float v = std::ldexp(float(m), -24);
      return sign ? -v : v;
    }
    if (e == 0x1F) return bits_float(sign | 0x7F800000u | (m << 13));
    return bits_float(sign | ((e + 127u - 15u) << 23) | (m << 13));
  }
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// Call `kernel` with its arguments unpacked from `args`, cuLaunchKernel's void** convention.
template <typename... A, std::size_t... I>
void call_packed(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

// The C type of a kernel parameter, as the launcher checks its arguments against it ("int", "float*", ...).
template <typename T> struct ctype;
template <> struct ctype<int> { static constexpr const char *name = "int", *pointer = "int*"; };
template <> struct ctype<unsigned int> {
  static constexpr const char *name = "unsigned int", *pointer = "unsigned int*";
};
template <> struct ctype<unsigned char> {
  static constexpr const char *name = "unsigned char", *pointer = "unsigned char*";
};
template <> struct ctype<float> { static constexpr const char *name = "float", *pointer = "float*"; };
template <> struct ctype<double> { static constexpr const char *name = "double", *pointer = "double*"; };
template <> struct ctype<__half> { static constexpr const char *name = "__half", *pointer = "__half*"; };
template <> struct ctype<__nv_bfloat16> {
  static constexpr const char *name = "__nv_bfloat16", *pointer = "__nv_bfloat16*";
};
template <typename A>
constexpr const char* param_type() {
  if constexpr (std::is_pointer_v<A>) return ctype<std::remove_cv_t<std::remove_pointer_t<A>>>::pointer;
  else return ctype<std::remove_cv_t<A>>::name;
}

// The kernel's parameter types, null-terminated, so a caller can check its arguments.
template <typename... A>
const char* const* signature(void (*)(A...)) {
  static const char* const types[] = {param_type<A>()..., nullptr};
  return types;
}

template <typename... A>
void launch(void (*kernel)(A...), dim3 grid, dim3 block, void** args) {
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              blockIdx = {bx, by, bz};
              threadIdx = {tx, ty, tz};
              call_packed(kernel, args, std::index_sequence_for<A...>{});
            }
}

// Fibers run the threads of one or more blocks at once, each thread a fiber (a ucontext with a stack of its own)
// on the launching thread.  Between two grid barriers the blocks run one after another, the order reversed at each
// grid barrier: a block runs alone until every thread of it waits at grid_sync() or has ended, so a block that read
// what another writes before the barrier, or wrote what another reads, would see (or leave) the other's memory as
// it was.  Within a block, in rounds: every thread that is not waiting runs until its next barrier or its end, one
// after another, the order reversed each round; a thread waiting at __syncthreads() goes on when every unfinished
// thread of its block waits there, one at grid_sync() when every thread of the grid does (a thread that ends while
// others wait at a grid barrier, or threads of one block waiting at different barriers, would hang a GPU: abort).
// So no thread passes a barrier before all have reached it, as on a GPU, and a missing one shows as a wrong result.
class Fibers {
 public:
  static constexpr std::size_t STACK = std::size_t(1) << 17;  // bytes per thread: a kernel's frame and libm's

  // `blocks` blocks of `block` threads at once, each with `shared_bytes` of dynamic shared memory
  Fibers(unsigned blocks, dim3 block, std::size_t shared_bytes, std::function<void()> body)
      : per_block_(block.x * block.y * block.z), n_(blocks * per_block_), block_(block), body_(std::move(body)),
        fibers_(n_), stacks_(new char[n_ * STACK]), shared_(blocks), wait_(n_), block_ids_(blocks) {
    for (auto& memory : shared_) {  // NaN in every float type: a GPU's shared memory starts with what was there
      memory.reset(new unsigned char[shared_bytes]);
      std::memset(memory.get(), 0xFF, shared_bytes);
    }
  }

  void run(const std::vector<dim3>& block_ids) {  // every thread of these blocks from its start to its end
    block_ids_ = block_ids;
    for (unsigned k = 0; k < n_; ++k) {
      getcontext(&fibers_[k]);
      fibers_[k].uc_stack.ss_sp = stacks_.get() + k * STACK;
      fibers_[k].uc_stack.ss_size = STACK;
      fibers_[k].uc_link = &scheduler_;
      makecontext(&fibers_[k], &Fibers::entry, 0);
      wait_[k] = NONE;
    }
    const unsigned blocks = unsigned(block_ids.size());
    for (bool forward = true;; forward = !forward) {
      for (unsigned q = 0; q < blocks; ++q) run_block(forward ? q : blocks - 1 - q);
      unsigned at_grid = 0, done = 0;
      for (unsigned k = 0; k < n_; ++k) {
        at_grid += wait_[k] == GRID;
        done += wait_[k] == DONE;
      }
      if (done == n_) return;
      if (at_grid < n_) deadlock(at_grid, done);
      for (unsigned k = 0; k < n_; ++k) wait_[k] = NONE;  // every thread has reached the grid barrier
    }
  }
  void block_barrier() { yield(BLOCK); }  // __syncthreads()
  void grid_barrier() { yield(GRID); }    // grid_sync()

  static inline thread_local Fibers* running = nullptr;  // the threads being run on this thread, if any
  static inline thread_local unsigned char* dynamic_shared = nullptr;  // the running thread's block's

 private:
  enum Wait : unsigned char { NONE, BLOCK, GRID, DONE };

  static void entry() {  // a fiber's start: the kernel, then back to the scheduler through uc_link
    Fibers* self = running;
    const unsigned k = self->current_;
    self->body_();
    self->wait_[k] = DONE;
  }
  void yield(const Wait why) {
    wait_[current_] = why;
    swapcontext(&fibers_[current_], &scheduler_);
  }
  // Block q's threads until each waits at a grid barrier or has ended.
  void run_block(const unsigned q) {
    const unsigned first = q * per_block_, last = first + per_block_;
    for (bool running = true; running; forward_ = !forward_) {
      for (unsigned p = 0; p < per_block_; ++p) {
        const unsigned k = forward_ ? first + p : last - 1 - p;
        if (wait_[k] != NONE) continue;
        current_ = k;
        const unsigned t = k - first;
        threadIdx = {t % block_.x, (t / block_.x) % block_.y, t / (block_.x * block_.y)};
        blockIdx = block_ids_[q];
        dynamic_shared = shared_[q].get();
        swapcontext(&scheduler_, &fibers_[k]);
      }
      bool at_block = false, at_grid = false;
      for (unsigned k = first; k < last; ++k) {
        at_block = at_block || wait_[k] == BLOCK;
        at_grid = at_grid || wait_[k] == GRID;
      }
      if (at_block && at_grid) {
        std::fputs("deadlock: threads of one block wait at __syncthreads() and at grid_sync()\n", stderr);
        std::abort();
      }
      running = at_block;
      if (at_block)
        for (unsigned k = first; k < last; ++k) wait_[k] = wait_[k] == BLOCK ? NONE : wait_[k];
    }
  }
  [[noreturn]] void deadlock(const unsigned at_grid, const unsigned done) const {
    std::fprintf(stderr, "deadlock: %u of %u threads wait at grid_sync(), %u have ended\n", at_grid, n_, done);
    std::abort();
  }

  const unsigned per_block_, n_;
  const dim3 block_;
  std::function<void()> body_;
  ucontext_t scheduler_;
  std::vector<ucontext_t> fibers_;
  std::unique_ptr<char[]> stacks_;     // uninitialised: a fiber's stack is written before it is read
  // [blocks][shared_bytes] each block's dynamic shared memory, an allocation of its own so that AddressSanitizer
  // sees a block's overrun (into the next block's memory, were they one)
  std::vector<std::unique_ptr<unsigned char[]>> shared_;
  std::vector<Wait> wait_;
  std::vector<dim3> block_ids_;
  unsigned current_ = 0;
  bool forward_ = true;  // the order of a block's next round
};

inline void __syncthreads() {
  if (blockDim.x * blockDim.y * blockDim.z == 1) return;  // a lone thread has nobody to wait for
  if (Fibers::running == nullptr) {  // `launch` runs a block's threads one after another
    std::fputs("__syncthreads() in a kernel launched with `launch`, not `launch_blocks`\n", stderr);
    std::abort();
  }
  Fibers::running->block_barrier();
}

// persistent.cu's grid_sync: every thread of the grid waits (the counter a GPU's barrier keeps is not needed here)
inline void grid_sync(unsigned int*) {
  if (Fibers::running == nullptr) {
    std::fputs("grid_sync() in a kernel not launched with `launch_cooperative`\n", stderr);
    std::abort();
  }
  Fibers::running->grid_barrier();
}

// The block's dynamic shared memory (extern __shared__ on a GPU).
inline unsigned char* dynamic_shared_memory() { return Fibers::dynamic_shared; }

template <typename... A>
void run_fibers(void (*kernel)(A...), const std::vector<dim3>& blocks, dim3 block, std::size_t shared_bytes,
                void** args) {
  Fibers fibers(unsigned(blocks.size()), block, shared_bytes,
                [&] { call_packed(kernel, args, std::index_sequence_for<A...>{}); });
  Fibers::running = &fibers;
  fibers.run(blocks);
  Fibers::running = nullptr;
}

// A grid whose blocks' threads meet at __syncthreads(): the blocks one after another, each as Fibers (a block's
// static __shared__ memory is then its own while it runs).
template <typename... A>
void launch_blocks(void (*kernel)(A...), dim3 grid, dim3 block, void** args) {
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) run_fibers(kernel, {dim3{bx, by, bz}}, block, 0, args);
}

// cuLaunchCooperativeKernel: every block at once, as on a GPU that holds them all (the launcher checks they fit),
// each with shared_bytes of dynamic shared memory; the threads meet at __syncthreads() and grid_sync().
template <typename... A>
void launch_cooperative(void (*kernel)(A...), dim3 grid, dim3 block, std::size_t shared_bytes, void** args) {
  gridDim = grid;
  blockDim = block;
  std::vector<dim3> blocks;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) blocks.push_back(dim3{bx, by, bz});
  run_fibers(kernel, blocks, block, shared_bytes, args);
}
