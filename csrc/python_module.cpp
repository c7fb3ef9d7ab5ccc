// The Python module `inpaint_fast._C` (built by setup.py only; the CMake library has no Python).
//
// Importing it loads this shared library, which runs the static initializers of TORCH_LIBRARY
// (csrc/ops.cpp) and of every backend's TORCH_LIBRARY_IMPL. The module itself is empty, as in
// pytorch/extension-cpp: no pybind11, so the limited C API is enough.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      NULL,  // doc
      -1,    // size of per-interpreter state
      NULL,  // methods
  };
  return PyModule_Create(&module_def);
}
}
