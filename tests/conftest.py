import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest

GPU_REASON = "needs an NVIDIA GPU"


def pytest_collection_modifyitems(config, items):
    """A test that skips without a GPU must carry the gpu marker: bench/gpu_session.sh runs
    `pytest -m gpu` on a lent GPU, and an unmarked one would never run anywhere."""
    unmarked = [item.nodeid for item in items
                if any(str(m.kwargs.get("reason", "")).startswith(GPU_REASON) for m in item.iter_markers("skipif"))
                and item.get_closest_marker("gpu") is None]
    if unmarked:
        raise pytest.UsageError(f"tests that skip with {GPU_REASON!r} need @pytest.mark.gpu: {unmarked}")
