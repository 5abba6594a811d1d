"""The CLI's answers to ordinary mistakes and missing tools: one `adamgen: error:` line naming
what is wrong (no traceback), a usage exit code (2) for bad input and 1 for the environment,
and nothing written."""
from __future__ import annotations

import json

import pytest

from adamgen import AdamSpec, toolchain
from adamgen import tune as T
from adamgen.cli import main, spec_from_args, build_parser


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("adamgen: error: ") and "Traceback" not in err
    return err


def test_a_keras_config_file_that_is_missing_or_not_json_is_named(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["build", "--from-keras-config", str(missing), "-o", str(tmp_path / "a")]) == 2
    assert "--from-keras-config" in (err := _error(capsys)) and "missing.json" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["build", "--from-keras-config", str(bad), "-o", str(tmp_path / "a")]) == 2
    assert "is not JSON" in _error(capsys)
    assert not (tmp_path / "a").exists()


def test_schedule_and_learning_rate_together_is_a_usage_error(capsys):
    argv = ["build", "--learning-rate", "0.1", "--schedule", "ExponentialDecay:initial_learning_rate=0.1,"
            "decay_steps=10,decay_rate=0.5", "--emit", "spec"]
    assert main(argv) == 2
    assert "exclusive" in _error(capsys)


@pytest.mark.parametrize("text", ["True", " True", "True "])
def test_a_schedule_boolean_is_read_whatever_the_spaces(text):
    args = build_parser().parse_args(["build", "--schedule", "ExponentialDecay:initial_learning_rate=0.1,"
                                      f"decay_steps=10,decay_rate=0.5,staircase={text}"])
    assert spec_from_args(args).learning_rate.get_config()["staircase"] is True


def test_a_missing_compiler_is_an_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def missing(sources, platform):
        raise toolchain.ToolchainError("nvcc not found (looked in CUDA_HOME/bin, PATH)")
    monkeypatch.setattr(toolchain, "compile_all", missing)
    out = tmp_path / "art"
    assert main(["build", "--target", "cuda", "-o", str(out)]) == 1
    assert "nvcc not found" in _error(capsys)
    assert not out.exists()


def test_tune_options_without_tune_and_bad_sizes_are_refused(tmp_path, capsys):
    assert main(["build", "--target", "cpu", "--params", "1000", "-o", str(tmp_path / "a")]) == 2
    assert "give --tune too" in _error(capsys)
    for value in ("0", "-5", "lots"):
        with pytest.raises(SystemExit):
            main(["tune", "--target", "cpu", "--params", value])
        assert "positive int" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_build_tune_passes_size_and_cache_and_says_which_dtype_it_tuned(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "_time_candidate", lambda *args: 1.0)
    monkeypatch.setattr(T, "_precompile", lambda *args: None)
    cache, out = tmp_path / "mine.json", tmp_path / "art"
    assert main(["build", "--target", "cpu", "--tune", "--params", "1000", "--cache", str(cache),
                 "--dtype", "f32", "--dtype", "bf16", "-o", str(out)]) == 0
    (key, entry), = json.loads(cache.read_text()).items()
    record = json.loads((out / "build.json").read_text())["tune"]
    assert record["key"] == key and record["status"] == "tuned"
    assert T.tune(AdamSpec(), "cpu", "f32", 1000, cache_file=cache).status == "cached"  # the small bucket, f32
    assert "tuned for f32 (the first --dtype); the bf16 kernels use the same knobs" in record["reason"]


def test_build_tune_on_the_jax_target_says_what_it_left(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["build", "--tune", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: --tune leaves the jax artifact as it is" in err and "per tensor" in err
    assert (out / "manifest.json").is_file()
