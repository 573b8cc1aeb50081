"""Ray, which the distributed extra installs: `ray` is the module or None, and `needs_ray`
skips a test without it, unless CHAINRULE_REQUIRE_RAY is set (as CI's main run sets it), when a
missing Ray fails the importing module."""
import os

import pytest

try:
    import ray
except ImportError:
    if os.environ.get("CHAINRULE_REQUIRE_RAY"):
        raise ImportError("CHAINRULE_REQUIRE_RAY is set, so these tests need Ray: "
                          "pip install -e '.[distributed]'") from None
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install -e "
                               "'.[distributed]'; CHAINRULE_REQUIRE_RAY=1 makes this a failure)")
