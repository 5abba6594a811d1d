"""Norm clipping on the cpu target, bit for bit: the one thing its kernels may do otherwise than
Keras is the order in which a tensor's squares are added (templates/host/reduce.cc.j2: per
chunk, 16 running lane sums combined in lane order, chunks added in order; XLA-CPU adds in
another). Given that order, the oracle must give the target's every bit: params, slots, EMA,
under clipnorm and global_clipnorm with every other option, float32, float16, bfloat16 and a mix
of them, on tensors that leave every lane tail and span chunks. This replaces a tolerance with
an exact account of where the target and Keras part (they part by a few ulps of the norm)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adamgen
from adamgen import xla_cpu
from adamgen.backends.cpp import HOST
from adamgen.lower import slots_for
from adamgen.oracle import Oracle
from tests.strategies import DTYPES, configs, data
from tests.test_host_vector import _same_or_both_nan
from tests.test_native import _bits
from tests.test_targets import FIELDS

LANES = 16  # reduce.cc.j2's kLanes


def host_tensor_sum(values: np.ndarray, chunk: int = HOST.chunk_elems) -> np.float32:
    """The host reduce kernel's float32 sum of `values` (one tensor's squares), in its order."""
    values = np.asarray(values, np.float32).ravel()
    total = np.float32(0)
    for begin in range(0, values.size, chunk):
        part = values[begin:begin + chunk]
        whole = part.size // LANES * LANES
        lanes = np.zeros(LANES, np.float32)
        for i in range(0, whole, LANES):  # lane l adds elements l, l + 16, ... one after another
            lanes = lanes + part[i:i + LANES]
        for x in part[whole:]:  # the tail, into lane 0 in order
            lanes[0] = lanes[0] + x
        partial = np.float32(0)
        for lane in lanes:
            partial = np.float32(partial + lane)
        total = np.float32(total + partial)
    return total


def _run_both(spec, params, grads_seq) -> list:
    """Steps the cpu target and the host-order oracle side by side: the same bits in every
    param and slot after every step, and in finalize (a NaN need only be a NaN: an overflowing
    norm makes every gradient NaN, and the sign x86 gives inf - inf is no part of the
    semantics). Returns the target's last params."""
    opt = adamgen.build(spec, target="cpu")
    orc = Oracle(spec, tensor_sum=host_tensor_sum)
    p = [np.array(x) for x in params]
    want_p, want_s = [np.array(x) for x in params], orc.init(params)
    state = opt.init(p)
    for step, grads in enumerate(grads_seq):
        p, state = opt.apply(grads, state, p)
        want_p, want_s = orc.apply(grads, want_s, want_p)
        unpacked = state.unpacked()
        pairs = [("param", p, want_p)] + [(slot, getattr(unpacked, FIELDS[slot]), getattr(want_s, FIELDS[slot]))
                                          for slot in slots_for(spec)]
        for what, got, want in pairs:
            for i, (a, b) in enumerate(zip(got, want)):
                a, b = np.asarray(a), np.asarray(b)
                assert a.dtype == b.dtype and a.shape == b.shape, f"step {step} {what}[{i}]"
                _same_or_both_nan(a, b, f"step {step} {what}[{i}]")
        assert int(state.iterations) == int(want_s.iterations)
    for i, (a, b) in enumerate(zip(opt.finalize(state, p), orc.finalize(want_s, want_p))):
        _same_or_both_nan(np.asarray(a), np.asarray(b), f"finalize[{i}]")
    return p


# every lane tail 0..15 somewhere, one element, and tensors of two and three chunks
SIZES = [1, 15, 16, 17, 31, 100, 1000, 4099, HOST.chunk_elems + 37, 2 * HOST.chunk_elems + 5]
FULL = dict(amsgrad=True, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=2,
            loss_scale_factor=128.0, gradient_accumulation_steps=2)


def _tree(dtypes, seed: int, steps: int = 4):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(DTYPES[d]) for n, d in zip(SIZES, dtypes)]
    # squares that sum to 0.01..100 whatever the size (a float16 norm of larger sums overflows:
    # every gradient NaN, no bits left to compare)
    grads = [[(rng.standard_normal(x.shape) * 10.0 ** rng.integers(-1, 2) / np.sqrt(x.size)).astype(x.dtype)
              for x in params] for _ in range(steps)]
    return params, grads


def test_the_kernels_order_is_not_xlas():
    """Not a vacuous test: on these sizes the two orders give other sums."""
    rng = np.random.default_rng(0)
    values = np.square(rng.standard_normal(SIZES[-1]).astype(np.float32))
    assert host_tensor_sum(values) != np.float32(xla_cpu.sum_f32(values))
    small = values[:15]  # below 16 lanes both add in order
    assert host_tensor_sum(small) == np.float32(xla_cpu.sum_f32(small))
    # and on whole steps: the cpu target parts from the oracle in Keras' order somewhere
    params, grads = _tree(["f32"] * len(SIZES), seed=3, steps=2)
    spec = adamgen.AdamSpec(learning_rate=0.01, clipnorm=0.5)
    got = _run_both(spec, params, grads)
    orc = Oracle(spec)
    want, state = [np.array(x) for x in params], orc.init(params)
    for g in grads:
        want, state = orc.apply(g, state, want)
    assert any((_bits(np.asarray(a)) != _bits(b)).any() for a, b in zip(got, want))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "mixed"])
@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
@pytest.mark.parametrize("variant", ["plain", "full"])
def test_cpu_norm_clipping_is_the_oracle_in_the_kernels_order(dtype, clip, variant):
    dtypes = (["f32", "f16", "bf16"] * 4)[:len(SIZES)] if dtype == "mixed" else [dtype] * len(SIZES)
    params, grads = _tree(dtypes, seed=len(dtype) + len(clip) + len(variant))
    kw = dict(FULL) if variant == "full" else {}
    spec = adamgen.AdamSpec(learning_rate=0.01, beta_2=0.99, **{clip: 0.5}, **kw)
    final = _run_both(spec, params, grads)
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in final)


@st.composite
def norm_configs(draw):
    config = draw(configs(allow_callables=False))
    for kind in ("clipnorm", "clipvalue", "global_clipnorm"):
        config["kw"].pop(kind, None)
    kind = draw(st.sampled_from(["clipnorm", "global_clipnorm"]))
    config["kw"][kind] = draw(st.sampled_from([0.05, 0.5, 3.0]))
    return config


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(norm_configs())
def test_cpu_norm_clipping_with_every_option_is_the_oracle_in_the_kernels_order(config):
    params, grads = data(config)
    _run_both(adamgen.AdamSpec(**config["kw"]), params, grads)
