// The fused CPU loss kernel for the compiler's default target (x86-64: SSE2); msd_ops.cpp calls it only on CPUs that have it.
// System headers come before the target pragma, so only this file's own code is compiled for it.
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#define MSD_FAST_NATIVE_LANES 4
#define MSD_FAST_ISA cpu::baseline
#include "fused_cpu_kernel.h"
