"""The ONNX opset that export writes unless told otherwise. It lives in a module of its own that
loads nothing, so that the command line can show it without loading onnx, and the exporter
reads it without importing the package that loads the exporter."""
DEFAULT_OPSET = 18
