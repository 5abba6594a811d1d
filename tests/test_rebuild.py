"""Artifacts from another adamgen: the semantics version in the manifest, and `adamgen rebuild`."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import adamgen
from adamgen import aot
from adamgen.backends.cpp import HOST
from adamgen.backends.native_artifact import write_native_artifact
from adamgen.cli import main

SPEC = dict(amsgrad=True, loss_scale_factor=100.0)


def _edit_manifest(out: Path, edit) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _step(opt) -> np.ndarray:
    params = [np.linspace(-1, 1, 5, dtype=np.float32), np.full((1,), 0.5, np.float32)]
    grads = [np.linspace(0.3, -0.2, 5, dtype=np.float32), np.full((1,), 0.7, np.float32)]
    new, _ = opt.apply(grads, opt.init(params), [np.array(p) for p in params])
    return np.concatenate([np.ravel(np.asarray(p)) for p in new])


def _loads_quietly(out: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return adamgen.load(out)


def test_an_artifact_records_the_semantics_version(tmp_path):
    out = aot.write_artifact(adamgen.AdamSpec(**SPEC), "jax", tmp_path / "art")
    assert json.loads((out / "manifest.json").read_text())["semantics"] == aot.SEMANTICS
    _loads_quietly(out)


def test_an_older_artifact_loads_with_a_warning_and_rebuild_brings_it_up_to_date(tmp_path, capsys):
    spec = adamgen.AdamSpec(**SPEC)
    out = aot.write_artifact(spec, "jax", tmp_path / "art")
    _edit_manifest(out, lambda m: m.pop("semantics"))  # as an adamgen before the field wrote it
    with pytest.warns(UserWarning, match=r"earlier adamgen \(semantics version 0.*adamgen rebuild"):
        adamgen.load(out)
    assert main(["rebuild", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    rebuilt = _loads_quietly(out)
    fresh = aot.write_artifact(spec, "jax", tmp_path / "fresh")
    for name in ("spec.json", "kernels.f32.txt", "ir.f32.txt"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    np.testing.assert_array_equal(_step(rebuilt), _step(adamgen.build(spec, target="jax")))


def test_an_artifact_from_a_newer_adamgen_is_refused_and_can_be_rebuilt(tmp_path):
    out = aot.write_artifact(adamgen.AdamSpec(**SPEC), "jax", tmp_path / "art")
    _edit_manifest(out, lambda m: m.update(semantics=aot.SEMANTICS + 1))
    with pytest.raises(ValueError, match="newer adamgen.*upgrade adamgen"):
        adamgen.load(out)
    _edit_manifest(out, lambda m: m.update(semantics="1"))
    with pytest.raises(ValueError, match="semantics must be a non-negative int"):
        adamgen.load(out)
    assert main(["rebuild", str(out)]) == 0
    _loads_quietly(out)


def _as_if_built_by_other_templates(out: Path) -> Path:
    """The artifact's kernel source as other templates would render it, the manifest still
    consistent (its file hashes match), with no templates hash (an adamgen before the field)."""
    source = next(out.glob("update.f32.cc"))
    source.write_text(source.read_text() + "// rendered by another adamgen\n")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    def edit(m):
        m["files"][source.name] = digest
        m.pop("templates")
    _edit_manifest(out, edit)
    return source


def test_a_native_artifact_from_other_templates_says_rebuild_and_rebuild_keeps_its_knobs(tmp_path):
    spec = adamgen.AdamSpec(**SPEC)
    caps = replace(HOST, chunk_elems=4096, tensors_per_call=8)
    record = {"status": "tuned", "config": {"chunk_elems": 4096, "tensors_per_call": 8}}
    out = write_native_artifact(spec, "cpu", tmp_path / "art_cpu", ("f32",), caps=caps, tune_record=record)
    knobs = json.loads((out / "manifest.json").read_text())["capabilities"]
    _as_if_built_by_other_templates(out)
    with pytest.raises(ValueError, match=r"other kernel templates.*adamgen rebuild"):
        adamgen.load(out)
    assert main(["rebuild", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["capabilities"] == knobs and manifest["capabilities"]["chunk_elems"] == 4096
    assert json.loads((out / "build.json").read_text())["tune"] == record
    np.testing.assert_array_equal(_step(_loads_quietly(out)), _step(adamgen.build(spec, target="cpu")))


def test_an_edited_native_source_is_named_as_such(tmp_path):
    out = write_native_artifact(adamgen.AdamSpec(), "cpu", tmp_path / "art_cpu", ("f32",))
    templates = json.loads((out / "manifest.json").read_text())["templates"]
    _as_if_built_by_other_templates(out)
    _edit_manifest(out, lambda m: m.update(templates=templates))
    with pytest.raises(ValueError, match="the artifact was edited"):
        adamgen.load(out)


def test_rebuild_into_another_directory_leaves_the_artifact_alone(tmp_path):
    out = aot.write_artifact(adamgen.AdamSpec(**SPEC), "jax", tmp_path / "art")
    _edit_manifest(out, lambda m: m.pop("semantics"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["rebuild", str(out), "-o", str(tmp_path / "new")]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _loads_quietly(tmp_path / "new")


def test_rebuild_of_what_is_not_an_artifact_is_a_clear_error(tmp_path, capsys):
    assert main(["rebuild", str(tmp_path)]) == 2
    assert "not an adamgen artifact: no manifest.json" in capsys.readouterr().err
    out = aot.write_artifact(adamgen.AdamSpec(), "jax", tmp_path / "art")
    (out / "spec.json").write_text("{}")
    assert main(["rebuild", str(out)]) == 2
    assert "does not match the manifest hash" in capsys.readouterr().err


def test_capabilities_record_round_trips_every_knob():
    from adamgen.backends.cpp import CUDA
    for caps in (HOST, CUDA, replace(HOST, vector_dtypes=(), unroll=4, fma=True, inflight_elems=512)):
        record = json.loads(json.dumps(caps.record()))
        assert "platform" not in record and "vector_dtypes" in record and "inflight_elems" in record
        base = replace(caps, chunk_elems=caps.chunk_elems * 2, vector_dtypes=("bf16",) if caps.platform == "cpu" else ())
        assert base.with_record(record, "here") == caps


@pytest.mark.parametrize("knobs, message", [
    ({"vector_dtypes": "f16"}, r"capabilities\.vector_dtypes must be a list of strings"),
    ({"vector_dtypes": ["f64"]}, r"vector_dtypes: \['f64'\] are not float types"),
    ({"unroll": True}, r"capabilities\.unroll must be int"),
    ({"fma": 1}, r"capabilities\.fma must be bool"),
    ({"unroll": 0}, r"unroll must be a positive int"),
    ({"warp_size": 32}, r"\['warp_size'\] are not knobs of this adamgen; allowed: \["),
])
def test_bad_capabilities_in_a_manifest_name_the_file_and_the_knob(tmp_path, knobs, message):
    out = write_native_artifact(adamgen.AdamSpec(), "cpu", tmp_path / "art_cpu", ("f32",))
    _edit_manifest(out, lambda m: m["capabilities"].update(knobs))
    with pytest.raises(ValueError, match=message) as err:
        adamgen.load(out)
    assert str(out / "manifest.json") in str(err.value)


def test_a_float16_artifact_built_without_the_vector_loop_loads_and_rebuilds_as_built(tmp_path):
    spec = adamgen.AdamSpec(**SPEC)
    caps = replace(HOST, vector_dtypes=())
    out = write_native_artifact(spec, "cpu", tmp_path / "art_cpu", ("f16",), caps=caps)
    assert json.loads((out / "manifest.json").read_text())["capabilities"]["vector_dtypes"] == []
    assert "kVectorBody = false;" in (out / "update.f16.cc").read_text()
    params = [np.linspace(-1, 1, 37, dtype=np.float16)]
    grads = [np.linspace(0.3, -0.2, 37, dtype=np.float16)]

    def step(opt):
        return np.asarray(opt.apply(grads, opt.init(params), [np.array(p) for p in params])[0][0])

    loaded = step(_loads_quietly(out))  # renders the same source again: not "edited"
    np.testing.assert_array_equal(loaded.view(np.uint16), step(adamgen.build(spec, target="cpu")).view(np.uint16))
    assert main(["rebuild", str(out)]) == 0
    assert "kVectorBody = false;" in (out / "update.f16.cc").read_text()


def test_a_manifest_from_before_a_knob_was_recorded_loads_with_its_default(tmp_path):
    out = write_native_artifact(adamgen.AdamSpec(**SPEC), "cpu", tmp_path / "art_cpu", ("f32",))
    _edit_manifest(out, lambda m: [m["capabilities"].pop(k) for k in ("vector_dtypes", "inflight_elems")])
    np.testing.assert_array_equal(_step(_loads_quietly(out)), _step(adamgen.build(adamgen.AdamSpec(**SPEC), target="cpu")))
