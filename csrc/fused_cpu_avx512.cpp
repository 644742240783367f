// The fused CPU loss kernel for x86-64-v4 (AVX-512 F, BW, DQ, VL, CD); msd_ops.cpp calls it only on CPUs that have it.
// System headers come before the target pragma, so only this file's own code is compiled for it.
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define MSD_FAST_NATIVE_LANES 16
#define MSD_FAST_ISA cpu::avx512
#include "fused_cpu_kernel.h"
#pragma GCC pop_options
