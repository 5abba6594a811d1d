"""CLI, artifacts, loading in a fresh process, and the checked-in generated/ snapshots."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import adamgen
from adamgen import aot
from adamgen.cli import main
from adamgen.ir.parser import parse_module
from adamgen.snapshots import MACHINE_SPECIFIC, ROOT, SNAPSHOTS, build_all

REPO = Path(__file__).resolve().parent.parent


def test_build_then_load_in_a_fresh_process_matches_the_oracle(tmp_path):
    out = tmp_path / "adam_amsgrad_jax"
    assert main(["build", "--amsgrad", "--weight-decay", "0.01", "--target", "jax", "-o", str(out)]) == 0
    script = textwrap.dedent(f"""
        import sys, json, numpy as np
        sys.path.insert(0, {str(tmp_path)!r})
        from adam_amsgrad_jax import optimizer as opt
        import adamgen.pipeline as pl
        pl.optimize = pl.fuse_kernels = None   # loading must not re-run the compiler
        rng = np.random.default_rng(0)
        tree = [rng.standard_normal(50).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)]
        flat = rng.standard_normal(64).astype(np.float32)
        s, fs = opt.init(tree), opt.init(flat)
        for k in range(3):
            tree, s = opt.apply([np.full(50, 0.1 * k, np.float32), np.full((3, 4), -0.2, np.float32)], s, tree)
            flat, fs = opt.apply(np.linspace(-1, 1, 64).astype(np.float32), fs, flat)
        print(json.dumps([np.asarray(t).ravel().tolist() for t in tree] + [np.asarray(flat).tolist()]))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    orc = adamgen.build(adamgen.AdamSpec(amsgrad=True, weight_decay=0.01), "numpy")
    rng = np.random.default_rng(0)
    tree = [rng.standard_normal(50).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)]
    flat = [rng.standard_normal(64).astype(np.float32)]
    s, fs = orc.init(tree), orc.init(flat)
    for k in range(3):
        tree, s = orc.apply([np.full(50, 0.1 * k, np.float32), np.full((3, 4), -0.2, np.float32)], s, tree)
        flat, fs = orc.apply([np.linspace(-1, 1, 64).astype(np.float32)], fs, flat)
    want = [t.ravel().tolist() for t in tree] + [flat[0].tolist()]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stage", ["spec", "ir", "ir-opt", "kernels", "jax"])
def test_emit_every_stage(stage, capsys):
    assert main(["build", "--use-ema", "--global-clipnorm", "1.0", "--emit", stage]) == 0
    text = capsys.readouterr().out
    if stage == "spec":
        assert json.loads(text)["use_ema"] is True
    elif stage == "jax":
        assert "sqrt" in text and "lambda" in text
    else:
        module = parse_module(text)
        names = [f.name for f in module.functions]
        assert names == (["adam_step"] if stage in ("ir", "ir-opt") else ["scalars0", "reduce1", "scalars1", "update"])


def test_bad_flag_value_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["build", "--gradient-accumulation-steps", "1", "-o", str(out)]) == 2
    assert "gradient_accumulation_steps" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["build", "--target", "tpu"])


def test_from_keras_config_file(tmp_path, capsys):
    cfg = adamgen.AdamSpec(amsgrad=True, clipvalue=0.5, learning_rate=0.01).get_config()
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps({"module": "keras.optimizers", "class_name": "Adam", "config": cfg, "registered_name": None}))
    assert main(["build", "--from-keras-config", str(f), "--weight-decay", "0.1", "--emit", "spec"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["amsgrad"] is True and got["clipvalue"] == 0.5 and got["weight_decay"] == 0.1


def test_schedule_flag(capsys):
    assert main(["build", "--schedule", "CosineDecay:initial_learning_rate=0.01,decay_steps=100", "--emit", "ir"]) == 0
    assert "cos " in capsys.readouterr().out


def test_failed_build_leaves_the_old_artifact_intact(tmp_path, monkeypatch):
    out = tmp_path / "adam_x"
    assert main(["build", "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(aot, "export_flat_step", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["build", "--amsgrad", "-o", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adam_x"]


def test_tampered_artifact_is_refused(tmp_path):
    out = tmp_path / "adam_t"
    assert main(["build", "-o", str(out)]) == 0
    (out / "kernels.f32.txt").write_text((out / "kernels.f32.txt").read_text().replace("0.9", "0.8"))
    with pytest.raises(ValueError, match="does not match the manifest"):
        adamgen.load(out)


def test_load_rejects_a_dtype_it_was_not_built_for(tmp_path):
    import ml_dtypes
    out = tmp_path / "adam_d"
    assert main(["build", "-o", str(out)]) == 0
    opt = adamgen.load(out)
    p = [np.ones(3, ml_dtypes.bfloat16)]
    with pytest.raises(ValueError, match="rebuild with --dtype bf16"):
        opt.apply(p, opt.init(p), p)


def test_artifact_with_several_dtypes_carries_the_global_norm_variants(tmp_path):
    """Under global_clipnorm a tree of f32 and bf16 runs its bf16 group in the variant whose norm
    is f32: built with both --dtype flags the artifact has it (and runs such a tree as the
    oracle does); built for one, it says how to rebuild."""
    import ml_dtypes
    both, one = tmp_path / "adam_mixed", tmp_path / "adam_one"
    flags = ["build", "--global-clipnorm", "1.0", "--beta-2", "0.99"]  # a beta_2 bf16 does not round to 1
    assert main([*flags, "--dtype", "f32", "--dtype", "bf16", "-o", str(both)]) == 0
    assert main([*flags, "--dtype", "bf16", "-o", str(one)]) == 0
    assert json.loads((both / "manifest.json").read_text())["dtypes"] == ["f32", "bf16", "bf16_f32norm"]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(9).astype(np.float32), rng.standard_normal(5).astype(ml_dtypes.bfloat16)]
    grads = [(3 * rng.standard_normal(x.shape)).astype(x.dtype) for x in params]
    oracle = adamgen.build(adamgen.AdamSpec(global_clipnorm=1.0, beta_2=0.99), target="numpy")
    want = oracle.apply(grads, oracle.init(params), [x.copy() for x in params])
    opt = adamgen.load(both)
    got = opt.apply(grads, opt.init(params), [x.copy() for x in params])
    assert not np.array_equal(np.asarray(got[0][1], np.float32), np.asarray(params[1], np.float32)), "bf16 did not move"
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2, atol=1e-3)
    opt = adamgen.load(one)
    with pytest.raises(ValueError, match="built for dtypes \\['bf16'\\], not f32; rebuild with --dtype f32"):
        opt.apply(grads, opt.init(params), [x.copy() for x in params])


# What the installed JAX writes (its serialization, its jaxpr printer): byte-compared only under
# the JAX the snapshots were made with (manifest versions.jax); under another the rest still is.
JAX_MADE = (".jaxexport", "jax.f32.txt", "jax.f16.txt", "jax.bf16.txt")


def _manifest_without_jax(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    manifest["versions"].pop("jax")
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.endswith(JAX_MADE)}
    return manifest


def test_generated_snapshots_are_up_to_date(tmp_path):
    """Rebuild every checked-in artifact; any byte of difference fails (regenerate with
    `python -m adamgen.snapshots` after a deliberate compiler change)."""
    build_all(tmp_path)
    for name in SNAPSHOTS:
        fresh, checked_in = tmp_path / name, ROOT / name
        assert checked_in.is_dir(), f"generated/{name} is missing; run python -m adamgen.snapshots"
        def listed(d):
            return sorted(p.name for p in d.iterdir() if p.name != "__pycache__" and not p.name.endswith(MACHINE_SPECIFIC))
        names = listed(fresh)
        assert names == listed(checked_in), name
        same_jax = json.loads((checked_in / "manifest.json").read_text())["versions"]["jax"] == jax.__version__
        for f in names:
            if same_jax or not (f.endswith(JAX_MADE) or f == "manifest.json"):
                assert (fresh / f).read_bytes() == (checked_in / f).read_bytes(), f"generated/{name}/{f} differs"
            elif f == "manifest.json":
                assert _manifest_without_jax(fresh / f) == _manifest_without_jax(checked_in / f), \
                    f"generated/{name}/manifest.json differs beyond the JAX version and JAX-made files"


def test_the_snapshot_comparison_under_another_jax_still_sees_a_changed_manifest(tmp_path):
    """The check used under another JAX version ignores exactly the JAX-made parts."""
    src = ROOT / "adam_amsgrad_jax" / "manifest.json"
    manifest = json.loads(src.read_text())
    manifest["versions"]["jax"] = "99.0"
    manifest["files"] = {k: ("0" * 64 if k.endswith(JAX_MADE) else v) for k, v in manifest["files"].items()}
    other = tmp_path / "manifest.json"
    other.write_text(json.dumps(manifest))
    assert _manifest_without_jax(other) == _manifest_without_jax(src)
    manifest["files"]["ir.f32.txt"] = "0" * 64
    other.write_text(json.dumps(manifest))
    assert _manifest_without_jax(other) != _manifest_without_jax(src)


def test_import_generated_package():
    res = subprocess.run([sys.executable, "-c", "from generated.adam_full_jax import optimizer as o; print(o.spec.use_ema)"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr


@pytest.mark.parametrize("drop_binary", [False, True])
def test_cpu_artifact_loads_in_a_fresh_process(tmp_path, drop_binary):
    out = tmp_path / "adam_full_cpu"
    flags = ["--amsgrad", "--weight-decay", "0.01", "--global-clipnorm", "1.0", "--use-ema"]
    assert main(["build", *flags, "--target", "cpu", "-o", str(out)]) == 0
    assert (out / "update.f32.cc").is_file() and (out / "update.f32.so").is_file()
    assert (out / "reduce1.f32.cc").is_file() and (out / "reduce1.f32.so").is_file()
    assert json.loads((out / "build.json").read_text())["compiler"]["kind"] == "host"
    if drop_binary:  # a checked-in snapshot has no library: it is rebuilt from the shipped source
        (out / "update.f32.so").unlink()
        (out / "reduce1.f32.so").unlink()
    script = textwrap.dedent(f"""
        import sys, json, numpy as np
        sys.path.insert(0, {str(tmp_path)!r})
        from adam_full_cpu import optimizer as opt
        p = [np.linspace(-1, 1, 100).astype(np.float32), np.ones((3, 3), np.float32)]
        s = opt.init(p)
        for k in range(3):
            p, s = opt.apply([np.full(100, 0.5, np.float32), np.full((3, 3), -2.0, np.float32)], s, p)
        print(json.dumps([np.asarray(x).ravel().tolist() for x in p]))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    orc = adamgen.build(adamgen.AdamSpec(amsgrad=True, weight_decay=0.01, global_clipnorm=1.0, use_ema=True), "numpy")
    p = [np.linspace(-1, 1, 100).astype(np.float32), np.ones((3, 3), np.float32)]
    s = orc.init(p)
    for k in range(3):
        p, s = orc.apply([np.full(100, 0.5, np.float32), np.full((3, 3), -2.0, np.float32)], s, p)
    for a, b in zip(got, p):
        np.testing.assert_allclose(a, b.ravel(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stage, needle", [("cpp", "XLA_FFI_CallFrame"), ("cuda", "__global__")])
def test_emit_native_source(stage, needle, capsys):
    assert main(["build", "--amsgrad", "--emit", stage]) == 0
    assert needle in capsys.readouterr().out


def test_bench_command_passes_its_arguments_to_the_suite():
    res = subprocess.run([sys.executable, "-m", "adamgen", "bench", "--help"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "--quick" in res.stdout and "--workloads" in res.stdout


def test_build_never_replaces_a_file_or_a_directory_of_other_files(tmp_path, monkeypatch, capsys):
    """The atomic swap replaces the output directory: only a new path, an empty directory or an
    earlier artifact may be replaced; anything else is refused before any compiling."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "notes.txt").write_text("precious")
    (tmp_path / "afile").write_text("hi")
    for out, why in [("userdir", "not an adamgen artifact"), ("afile", "not a directory"), (".", "working directory")]:
        assert main(["build", "-o", out]) == 2
        assert why in capsys.readouterr().err
    assert (tmp_path / "userdir" / "notes.txt").read_text() == "precious"
    assert (tmp_path / "afile").read_text() == "hi"
    assert main(["build", "-o", "art"]) == 0 and main(["build", "--amsgrad", "-o", "art"]) == 0  # an artifact: rebuilt
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["spec"]["amsgrad"] is True


def test_schedule_flag_errors_say_why(capsys):
    for text, why in [("CosineDecay:initial_learning_rate=0.1", "decay_steps"), ("Nope:x=1", "allowed"),
                      ("{bad", "double quotes")]:
        with pytest.raises(SystemExit):
            main(["build", "--schedule", text, "--emit", "spec"])
        err = capsys.readouterr().err
        assert why in err and "invalid _schedule value" not in err


def test_demo_refuses_what_it_cannot_run_before_building(capsys):
    assert main(["demo", "--steps", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert main(["demo", "--target", "cuda"]) == 2
        assert "NVIDIA GPU" in capsys.readouterr().err


def test_a_damaged_artifact_names_the_damage(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["build", "-o", str(out)]) == 0
    (out / "step.f32.jaxexport").unlink()
    with pytest.raises(ValueError, match="missing step.f32.jaxexport"):
        adamgen.load(out)
    (out / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        adamgen.load(out)
    assert main(["build", "--emit", "ir", "--dtype", "f16", "--dtype", "bf16"]) == 2
    assert "one --dtype" in capsys.readouterr().err


def test_build_warns_when_a_dtype_degenerates_a_hyper_parameter(capsys):
    assert main(["build", "--dtype", "bf16", "--emit", "spec"]) == 0
    assert "beta_2=0.999 rounds to exactly 1.0 in bf16" in capsys.readouterr().err
