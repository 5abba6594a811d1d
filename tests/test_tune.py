"""Auto-tuning: selection, the persistent cache and its key, corrupt caches, untuned defaults."""
from __future__ import annotations

import json
from dataclasses import replace

import jax
import numpy as np
import pytest

import adamgen
from adamgen import tune as T
from adamgen.backends.cpp import CAPABILITIES
from adamgen.cli import main

SPEC = adamgen.AdamSpec(amsgrad=True)


def fake_timer(calls):
    def timer(spec, target, dtype, caps, workloads, repeats):
        calls.append(caps)
        # best: chunk 16384, 16 tensors per call, unroll 2, all threads
        return (abs(caps.chunk_elems - 16384) / 1000 + caps.tensors_per_call / 100 + (caps.unroll != 2)
                + caps.threads)
    return timer


def test_tune_picks_the_fastest_and_caches_it(tmp_path):
    calls = []
    cache = tmp_path / "tune.json"
    first = T.tune(SPEC, "cpu", cache_file=cache, timer=fake_timer(calls))
    assert first.status == "tuned"
    assert first.config == T.TuneConfig(chunk_elems=16384, tensors_per_call=16, unroll=2, threads=0)
    assert len(calls) == T.search_size("cpu") == 8  # coordinate descent, each config timed once
    assert len(set(calls)) == len(calls)
    second = T.tune(SPEC, "cpu", cache_file=cache, timer=fake_timer(calls))
    assert second.status == "cached" and second.config == first.config and second.key == first.key
    assert len(calls) == T.search_size("cpu")  # no new timing
    assert json.loads(cache.read_text())[first.key]["config"]["chunk_elems"] == 16384


def test_coordinate_descent_sets_each_knob_given_the_ones_before():
    """A knob whose best value depends on an earlier one: the search follows the earlier choice."""
    axes = (("chunk_elems", (65536, 16384)), ("unroll", (1, 4)))
    cost = {(65536, 1): 5.0, (65536, 4): 1.0, (16384, 1): 3.0, (16384, 4): 4.0}
    best = T.coordinate_descent(axes, lambda c: cost[(c.chunk_elems, c.unroll)])
    assert best == T.TuneConfig(chunk_elems=16384, unroll=1)


def test_coordinate_descent_prepares_each_axis_before_timing_it():
    """The real tuner compiles an axis' candidates side by side: `prepare` gets all of them before
    the first is measured, with the knobs already chosen set."""
    axes = (("chunk_elems", (65536, 16384)), ("unroll", (1, 2, 4)))
    events = []
    best = T.coordinate_descent(axes, lambda c: events.append(("time", c)) or c.unroll + c.chunk_elems / 1e5,
                                lambda cs: events.append(("prepare", tuple(cs))))
    assert best == T.TuneConfig(chunk_elems=16384, unroll=1)
    assert events[0] == ("prepare", (T.TuneConfig(chunk_elems=65536, unroll=1), T.TuneConfig(chunk_elems=16384, unroll=1)))
    second = [i for i, e in enumerate(events) if e[0] == "prepare"][1]
    assert all(e[0] == "time" for e in events[1:second])
    assert events[second][1] == tuple(T.TuneConfig(chunk_elems=16384, unroll=u) for u in (1, 2, 4))


def test_precompile_fills_the_compiler_cache(tmp_path, monkeypatch):
    """After _precompile, building each candidate's kernels compiles nothing more."""
    from adamgen import toolchain
    from adamgen.backends.native import kernel_for
    from adamgen.compiler import compile_spec

    monkeypatch.setenv("ADAMGEN_CACHE_DIR", str(tmp_path))
    configs = [T.TuneConfig(chunk_elems=16384), T.TuneConfig(chunk_elems=8192, unroll=2)]
    T._precompile(SPEC, "cpu", "f32", configs)
    module = compile_spec(SPEC, "f32").kernels
    built = sorted(p.name for p in tmp_path.glob("*.so"))
    assert len(built) == 2
    for config in configs:
        source = kernel_for(module, "f32", config.apply(CAPABILITIES["cpu"])).source
        assert toolchain.compile_host(source).name in built


def test_cache_key_covers_dtype_bucket_and_kernel_source(tmp_path):
    cache = tmp_path / "tune.json"
    keys = {T.tune(SPEC, "cpu", dtype, n, cache_file=cache, timer=fake_timer([])).key
            for dtype, n in [("f32", 10), ("f16", 10), ("f32", 1 << 24)]}
    keys.add(T.tune(adamgen.AdamSpec(), "cpu", cache_file=cache, timer=fake_timer([])).key)
    assert len(keys) == 4


def test_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tmp_path):
    cache = tmp_path / "tune.json"
    cache.write_text("{not json")
    with pytest.warns(UserWarning, match="corrupt cache"):
        result = T.tune(SPEC, "cpu", cache_file=cache, timer=fake_timer([]))
    assert result.key in json.loads(cache.read_text())


def test_untuned_defaults_without_a_device_or_knobs():
    assert T.tune(SPEC, "jax").status == "untuned"
    if T.fingerprint("cuda")["gpu"] is None:
        res = T.tune(SPEC, "cuda")
        assert res.status == "untuned" and "no GPU" in res.reason


def test_config_applies_only_what_it_sets():
    caps = T.TuneConfig(chunk_elems=16384).apply(CAPABILITIES["cpu"])
    assert caps.chunk_elems == 16384 and caps.tensors_per_call == CAPABILITIES["cpu"].tensors_per_call


def test_real_timing_on_scratch_arrays(tmp_path):
    """Two real candidates, timed on scratch arrays; the result is a usable config."""
    cands = [T.TuneConfig(chunk_elems=16384), T.TuneConfig(chunk_elems=65536)]
    res = T.tune(SPEC, "cpu", n_params=1000, cache_file=tmp_path / "t.json", candidates=cands, repeats=2)
    assert res.status == "tuned" and res.config in cands
    assert all(ms > 0 for _, ms in res.timings_ms)


def test_build_tune_records_the_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "_time_candidate", fake_timer([]))
    monkeypatch.setattr(T, "_precompile", lambda *args: None)
    monkeypatch.setattr(T, "default_cache_file", lambda: tmp_path / "tune.json")
    out = tmp_path / "adam_tuned_cpu"
    assert main(["build", "--amsgrad", "--target", "cpu", "--tune", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    build = json.loads((out / "build.json").read_text())
    assert {k: manifest["capabilities"][k] for k in ("chunk_elems", "tensors_per_call", "unroll", "threads")} == \
        {"chunk_elems": 16384, "tensors_per_call": 16, "unroll": 2, "threads": 0}
    assert build["tune"]["status"] == "tuned"
    assert "GCC unroll 2" in (out / "update.f32.cc").read_text()
    opt = adamgen.load(out)
    assert opt._executor.caps.unroll == 2 and opt._executor.caps.chunk_elems == 16384
    params = [jax.numpy.ones((70_000,)), jax.numpy.ones((3,))]
    new, _ = opt.apply([jax.numpy.full((70_000,), 0.5), jax.numpy.full((3,), 0.5)], opt.init(params), params)
    np.testing.assert_allclose(np.asarray(new[0][:3]), np.asarray(new[1]))  # same math in every chunk


def test_cuda_search_covers_the_kernel_knobs_and_every_candidate_renders():
    """The cuda search sets chunk size, threads per block, vector width, vectors per thread, grid
    size and tensors per call; every config the search can reach is a valid kernel for every
    param dtype (the knobs validate together, e.g. a chunk is a whole number of vectors)."""
    from itertools import product

    from adamgen.backends.native import TUNABLE, kernel_for
    from adamgen.compiler import compile_spec

    knobs = [knob for knob, _ in T.SEARCH["cuda"]]
    assert set(knobs) == {"chunk_elems", "block_threads", "vector_bytes", "unroll", "blocks_per_sm",
                          "tensors_per_call", "hw_half"}
    assert set(knobs) <= set(TUNABLE)  # recorded in the manifest, restored by load
    assert T.search_size("cuda") == 13
    caps = CAPABILITIES["cuda"]
    for knob, values in T.SEARCH["cuda"]:
        assert values[0] == getattr(caps, knob), f"{knob}: the search starts from the default"
    module = {d: compile_spec(adamgen.AdamSpec(amsgrad=True), d).kernels for d in ("f32", "bf16")}
    sources, effective = set(), set()
    for values in product(*(v for _, v in T.SEARCH["cuda"])):
        config = T.TuneConfig(**dict(zip(knobs, values)))
        for dtype, mod in module.items():
            tuned = config.apply(caps)
            native = kernel_for(mod, dtype, tuned)
            assert native.ctx.chunk_elems % native.ctx.vec_elems == 0
            sources.add(native.source)
            effective.add((dtype, tuned.effective(2 if dtype == "bf16" else 4)))
    # every knob reaches the source (an unroll that the register budget lowers renders as the lower one)
    assert len(sources) == len(effective) > 2 * 3 ** 4 * 2 * 2


def test_cuda_unroll_is_lowered_to_the_register_budget():
    """Elements in flight per block (threads x unroll x vector) stay within inflight_elems; the
    host flavour keeps its unroll."""
    cuda = CAPABILITIES["cuda"]
    assert replace(cuda, unroll=4).unroll_for(4) == 4            # 256 threads x 4 x 4 f32
    assert replace(cuda, unroll=4, block_threads=512).unroll_for(4) == 2
    assert replace(cuda, unroll=4, block_threads=512).unroll_for(2) == 1  # bf16: 8-element vectors
    assert replace(cuda, unroll=4, block_threads=1024, vector_bytes=16).unroll_for(4) == 1
    assert replace(CAPABILITIES["cpu"], unroll=4).unroll_for(4) == 4


@pytest.mark.parametrize("field, value", [("vector_bytes", 12), ("unroll", 0), ("blocks_per_sm", -1),
                                          ("chunk_elems", 1.5), ("block_threads", 96), ("block_threads", 2048),
                                          ("hw_half", 2), ("hw_half", True)])
def test_capabilities_refuse_bad_knobs_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        replace(CAPABILITIES["cuda"], **{field: value})


def test_hardware_half_conversions_are_cuda_only_and_only_change_half_kernels():
    """hw_half is a cuda knob (the host has its own vector conversions); a float32 kernel is the
    same kernel either way, so the tuner times it once."""
    from adamgen.backends.native import kernel_for
    from adamgen.compiler import compile_spec

    with pytest.raises(ValueError, match="hw_half: only the cuda platform"):
        replace(CAPABILITIES["cpu"], hw_half=1)
    hw = replace(CAPABILITIES["cuda"], hw_half=1)
    assert hw.effective(4) == CAPABILITIES["cuda"].effective(4) and hw.effective(2) != CAPABILITIES["cuda"].effective(2)
    spec = adamgen.AdamSpec(amsgrad=True)
    for dtype, changes in (("f32", False), ("f16", True), ("bf16", True)):
        module = compile_spec(spec, dtype).kernels
        bits, cvt = (kernel_for(module, dtype, caps).source for caps in (CAPABILITIES["cuda"], hw))
        assert (bits != cvt) is changes, dtype
        assert ("#define ADAMGEN_HW_HALF 1" in cvt) is changes


class _Terminal:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_on_a_terminal_only(tty):
    out = _Terminal(tty)
    bar = T.Progress(3, "adamgen tune cpu", stream=out)
    for ms in (1.5, 2.5, 0.5):
        bar.step(f"{ms:.2f} ms")
    if tty:
        assert "adamgen tune cpu" in out.text and "3/3" in out.text and "0.50 ms" in out.text
    else:
        assert out.text == ""


def test_configs_that_build_the_same_kernel_are_timed_once(tmp_path, monkeypatch):
    """At 512 threads an unroll of 4 is lowered to 2 (the register budget): the search times
    that kernel once and gives both configs its time."""
    monkeypatch.setattr(T, "fingerprint", lambda target: {"gpu": "stand-in", "compute_capability": "9.0"})
    monkeypatch.setattr(T.toolchain, "compiler_version", lambda kind: "nvcc stand-in")
    calls = []
    cands = [T.TuneConfig(block_threads=512, unroll=2), T.TuneConfig(block_threads=512, unroll=4),
             T.TuneConfig(block_threads=256, unroll=4)]
    res = T.tune(SPEC, "cuda", cache_file=tmp_path / "t.json", candidates=cands,
                 timer=lambda spec, target, dtype, caps, workloads, repeats: calls.append(caps) or caps.unroll)
    assert len(calls) == 2
    timings = dict(res.timings_ms)
    assert len(timings) == 3 and timings[json.dumps(cands[0].knobs(), sort_keys=True)] == \
        timings[json.dumps(cands[1].knobs(), sort_keys=True)]


@pytest.mark.parametrize("vector_loop", [True, False])
def test_a_float16_kernel_on_the_host_vector_loop_does_not_search_unroll(tmp_path, monkeypatch, vector_loop):
    """The float16 host kernel's loop is 8-lane vectors where the CPU has AVX2 and F16C (the
    unroll reaches only its tail): there the unroll is not timed; elsewhere it is."""
    monkeypatch.setattr(T.hostcpu, "host_vector_loop", lambda compiler: vector_loop)
    calls = []
    result = T.tune(SPEC, "cpu", "f16", cache_file=tmp_path / "tune.json", timer=fake_timer(calls))
    assert len(calls) == T.search_size("cpu", vector_loop) == (6 if vector_loop else 8)
    assert {caps.unroll for caps in calls} == ({1} if vector_loop else {1, 2, 4})
    assert ("unroll" in result.config.knobs()) is not vector_loop
    assert ("not searched: unroll" in result.reason) is vector_loop


def test_a_float32_kernel_searches_unroll_even_where_the_host_has_vectors(tmp_path, monkeypatch):
    monkeypatch.setattr(T.hostcpu, "host_vector_loop", lambda compiler: True)
    calls = []
    T.tune(SPEC, "cpu", "f32", cache_file=tmp_path / "tune.json", timer=fake_timer(calls))
    assert {caps.unroll for caps in calls} == {1, 2, 4}


def test_a_cache_hit_keeps_the_result_reason(tmp_path, monkeypatch):
    """The second build's record says why a knob went unsearched, as the first did."""
    monkeypatch.setattr(T.hostcpu, "host_vector_loop", lambda compiler: True)
    cache = tmp_path / "tune.json"
    first = T.tune(SPEC, "cpu", "f16", cache_file=cache, timer=fake_timer([]))
    second = T.tune(SPEC, "cpu", "f16", cache_file=cache, timer=fake_timer([]))
    assert second.status == "cached" and second.reason == first.reason and "unroll" in first.reason


BAD_ENTRIES = {
    "unknown knob": {"config": {"chunk_elemz": 5}},
    "not an object": "fast",
    "no config": {"timings_ms": {}},
    "timings a list": {"config": {}, "timings_ms": [1.0]},
    "negative chunk": {"config": {"chunk_elems": -1}},
    "float knob": {"config": {"unroll": 2.5}},
    "bool knob": {"config": {"unroll": True}},
    "reason not text": {"config": {}, "reason": 3},
}


@pytest.mark.parametrize("entry", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_an_invalid_cache_entry_is_ignored_with_a_warning_and_retuned(tmp_path, entry):
    cache = tmp_path / "tune.json"
    key = T.tune(SPEC, "cpu", cache_file=cache, timer=fake_timer([])).key
    cache.write_text(json.dumps({key: entry, "other": {"config": {}}}))
    calls = []
    with pytest.warns(UserWarning, match=f"invalid cache entry {key}"):
        result = T.tune(SPEC, "cpu", cache_file=cache, timer=fake_timer(calls))
    assert result.status == "tuned" and len(calls) == T.search_size("cpu")
    written = json.loads(cache.read_text())
    assert written[key]["config"] == result.config.knobs() and "other" in written


def test_an_unwritable_cache_warns_and_still_returns_the_result(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = blocker / "tune.json"  # its folder is a file: neither mkdir nor the write can succeed
    with pytest.warns(UserWarning, match="cannot write the cache"):
        result = T.tune(SPEC, "cpu", cache_file=cache, timer=fake_timer([]))
    assert result.status == "tuned"
    assert result.config == T.TuneConfig(chunk_elems=16384, tensors_per_call=16, unroll=2, threads=0)
    assert list(tmp_path.iterdir()) == [blocker]


def test_real_timing_puts_its_scratch_arrays_on_the_targets_device(monkeypatch):
    """On a host whose default JAX device is a GPU, cpu tuning must still time cpu arrays."""
    seen = []
    real_put = jax.device_put
    monkeypatch.setattr(T.jax, "device_put", lambda x, device=None: seen.append(device) or real_put(x, device))
    T._time_candidate(SPEC, "cpu", "f32", CAPABILITIES["cpu"], [(2, 64)], 1)
    scratch = seen[:4]  # 2 params and 2 grads, put before anything else
    assert len(scratch) == 4 and all(d is not None and d.platform == "cpu" for d in scratch)
