// Defines the compiled ops of the inpaint_fast library from its schema file,
// inpaint_fast/ops/schemas.inc (the one place every op is declared; the Triton ops are defined
// from the same file on the Python side).
//
// Each backend registers its kernels for these schemas in its own TORCH_LIBRARY_IMPL block
// (csrc/cpu/*.cpp for CPU, csrc/cuda/*.cu for CUDA). Python (inpaint_fast/ops/) registers the
// fake (meta) kernels and the autograd formulas next to the public wrappers.

#include <torch/library.h>

TORCH_LIBRARY(inpaint_fast, m) {
#define INPAINT_FAST_OP(name, schema) m.def(#name schema);
#include "../inpaint_fast/ops/schemas.inc"
#undef INPAINT_FAST_OP
}
