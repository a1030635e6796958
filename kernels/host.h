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

// The C type of a kernel parameter, as the launcher checks its arguments against it ("int", "float*", ...).
template <typename T> struct ctype;
template <> struct ctype<int> { static constexpr const char *name = "int", *pointer = "int*"; };
template <> struct ctype<float> { static constexpr const char *name = "float", *pointer = "float*"; };
template <> struct ctype<double> { static constexpr const char *name = "double", *pointer = "double*"; };
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
