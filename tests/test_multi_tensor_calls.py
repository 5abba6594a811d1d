"""How many custom calls a native step makes, and that the split changes no bit.

A native step covers its tree in ceil(tensors / tensors_per_call) update calls, each one
parallel loop over its tensors' chunks, and norm clipping adds as many reduction calls
(per-tensor sums of squares; the global norm adds them in leaf order in the step's JAX code),
none without it. tensors_per_call is a tuned knob (cpu default 32, cuda 256): one call for a
whole 1000-tensor tree measured slower inside a jit on the cpu and compiles 3x longer
(bench/RESULTS.md), and on cuda a call's table travels in the kernel arguments (32 KiB).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import jax
import numpy as np
import pytest

import adamgen
from adamgen.backends.cpp import CAPABILITIES
from adamgen.backends.native import native_optimizer

N_TENSORS = 70


def _tree(seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(3 + 11 * i).astype(np.float32) for i in range(N_TENSORS)]


def _calls(opt) -> Counter:
    params, grads = [jax.numpy.asarray(x) for x in _tree(0)], [jax.numpy.asarray(x) for x in _tree(1)]
    text = jax.jit(opt.apply).lower(grads, opt.init(params), params).as_text()
    names = re.findall(r'custom_call @(\w+)', text)
    return Counter(name.split("_")[1] for name in names)  # adamgen_<kernel>_<dtype>_<platform>_<hash>


@pytest.mark.parametrize("clip", [{}, {"clipnorm": 0.5}, {"global_clipnorm": 1.0}], ids=["none", "clipnorm", "global"])
@pytest.mark.parametrize("per_call", [32, N_TENSORS])
def test_a_step_makes_one_update_call_and_one_reduction_call_per_group(clip, per_call):
    caps = replace(CAPABILITIES["cpu"], tensors_per_call=per_call)
    groups = -(-N_TENSORS // per_call)
    want = {"update": groups} | ({"reduce1": groups} if clip else {})
    assert _calls(native_optimizer(adamgen.AdamSpec(**clip), "cpu", caps)) == want


@pytest.mark.parametrize("clip", [{"clipnorm": 0.5}, {"global_clipnorm": 1.0}], ids=["clipnorm", "global"])
def test_the_split_into_calls_changes_no_bit(clip):
    spec = adamgen.AdamSpec(amsgrad=True, weight_decay=0.01, **clip)
    results = []
    for per_call in (7, 32, N_TENSORS):
        opt = native_optimizer(spec, "cpu", replace(CAPABILITIES["cpu"], tensors_per_call=per_call))
        params = [jax.numpy.asarray(x) for x in _tree(0)]
        state = opt.init(params)
        for step in range(3):
            params, state = opt.apply([jax.numpy.asarray(g) for g in _tree(10 + step)], state, params)
        results.append([np.asarray(p) for p in params])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
