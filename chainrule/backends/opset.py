"""The ONNX opset that export writes unless told otherwise. It lives in a module of its own that
loads nothing, so that the command line can show it without loading onnx."""
DEFAULT_OPSET = 18
