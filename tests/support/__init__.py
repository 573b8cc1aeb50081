"""What the tests share; no test module imports another.

- `paths`: the repository's root and its example models.
- `numeric`: finite differences, relative comparisons, the digits data, backend agreement.
- `cli`: the one CLI runner (in process), and a real process for the few tests that need one.
- `backend_checks`: standard ONNX, the tolerances between backends, and the compiled numpy
  backend against its interpreter.
- `op_checks`: the checks every op case gets (numpy reference, finite differences, onnxruntime).
- `conv_reference`: plain-numpy convolution and pooling, loops over windows.
- `fuzzing`: hypothesis settings and the random expressions the fuzz tests share.
- `conformance`: ONNX's node tests run through the importer, and their known failures.

tests/op_cases.py (the op cases) stays a plain module beside the tests.
"""
