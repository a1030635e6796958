// The CUDA execution model on the host, enough for the kernels in this folder:
// g++ builds an unchanged .cu into a shared library, and `launch` runs a kernel's
// grid one thread at a time.  That is exact for kernels whose threads share
// nothing (no __shared__, no __syncthreads, no warp intrinsics) — all of ours.
// Tolerances must still allow for FMA contraction and libm-vs-CUDA math.
#pragma once
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>

using std::exp;
using std::fabs;
using std::tanh;

#define __global__
#define __device__
#define __forceinline__ inline

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// Call `kernel` with its arguments unpacked from `args`, cuLaunchKernel's void** convention.
template <typename... A, std::size_t... I>
void call_packed(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

// The kernel's parameter kinds, 'i' for a scalar and 'p' for a pointer, so a caller can check its arguments.
template <typename... A>
const char* signature(void (*)(A...)) {
  static const char kinds[] = {(std::is_pointer_v<A> ? 'p' : 'i')..., '\0'};
  return kinds;
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
