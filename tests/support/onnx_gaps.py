"""Examples the ONNX exporter cannot export yet: the tests that export every example expect
these to fail (strictly, so they notice when the exporter learns the op)."""
import pytest

# Their graphs hold a scan node.
SCAN_EXAMPLES = {"sequence_model"}
NO_ONNX_SCAN = pytest.mark.xfail(reason="the ONNX exporter has no lowering for the scan op yet",
                                 strict=True)


def exported(paths) -> list:
    """The example paths as pytest params, the ones holding a scan marked as expected to fail."""
    return [pytest.param(p, marks=NO_ONNX_SCAN) if p.stem in SCAN_EXAMPLES else p for p in paths]
