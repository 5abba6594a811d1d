"""The `adamgen` command: argument parsing only; the work is in compiler.py and aot.py.

    adamgen build --amsgrad --weight-decay 0.01 --global-clipnorm 1.0 --target jax
    adamgen build --emit ir-opt --use-ema
    adamgen rebuild generated/adam          # an artifact built by an earlier adamgen, again
"""
from __future__ import annotations

import argparse
import enum
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

from adamgen.dtypes import PARAM_DTYPES

TARGETS = ("jax", "cpu", "cuda")


class Stage(enum.IntEnum):
    """The --emit ladder, in pipeline order."""

    SPEC = 0
    IR = 1
    IR_OPT = 2
    KERNELS = 3
    SOURCE = 4   # jax: jaxpr; cpu: C++; cuda: CUDA C++


EMIT_NAMES = {"spec": Stage.SPEC, "ir": Stage.IR, "ir-opt": Stage.IR_OPT, "kernels": Stage.KERNELS,
              "jax": Stage.SOURCE, "cpp": Stage.SOURCE, "cuda": Stage.SOURCE}
EMIT_TARGET = {"jax": "jax", "cpp": "cpu", "cuda": "cuda"}


def _optional_float(text: str) -> float:
    return float(text)


def _model_size(text: str) -> int:
    """--params: a positive number of params."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int (a number of params), got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive int (a number of params), got {value}")
    return value


def _schedule(text: str):
    """A schedule as JSON (a Keras-serialized dict) or NAME:key=value,key=value."""
    from adamgen.schedules import schedule_from_config

    try:
        return _parse_schedule(text.strip(), schedule_from_config)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        # argparse shows an ArgumentTypeError's own message (for a ValueError, only "invalid value")
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parse_schedule(text: str, schedule_from_config):
    if text.startswith("{"):
        return schedule_from_config(json.loads(text))
    name, _, args = text.partition(":")
    config = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"--schedule argument {item!r} must be key=value")
        value = value.strip()
        config[key.strip()] = json.loads(value) if value not in ("True", "False") else value == "True"
    return schedule_from_config({"class_name": name.strip(), "config": config})


SPEC_FLAGS = [
    # (flag, dest, type, help)
    ("--learning-rate", "learning_rate", float, "constant learning rate (default 0.001)"),
    ("--beta-1", "beta_1", float, "beta_1 (default 0.9)"),
    ("--beta-2", "beta_2", float, "beta_2 (default 0.999)"),
    ("--epsilon", "epsilon", float, "epsilon, added after the sqrt (default 1e-7)"),
    ("--weight-decay", "weight_decay", float, "decoupled weight decay, scaled by the learning rate"),
    ("--clipnorm", "clipnorm", float, "clip each gradient tensor to this L2 norm"),
    ("--clipvalue", "clipvalue", float, "clip each gradient element to [-v, v]"),
    ("--global-clipnorm", "global_clipnorm", float, "clip all gradients by their global L2 norm"),
    ("--ema-momentum", "ema_momentum", float, "EMA momentum (default 0.99; with --use-ema)"),
    ("--ema-overwrite-frequency", "ema_overwrite_frequency", int, "overwrite params with the EMA every N steps"),
    ("--loss-scale-factor", "loss_scale_factor", float, "divide gradients by this first"),
    ("--gradient-accumulation-steps", "gradient_accumulation_steps", int, "update every N calls with the mean gradient"),
    ("--name", "name", str, "optimizer name (default adam; also the artifact name)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adamgen", description="Compile a Keras-style Adam step into fused kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile a spec into an artifact directory (or print one stage)")
    _add_spec_flags(b)
    b.add_argument("--dtype", action="append", choices=PARAM_DTYPES, default=None,
                   help="param dtype to build for; repeat for several (default f32)")
    b.add_argument("-o", "--output", type=Path, default=None, help="artifact directory (default generated/<name>)")
    b.add_argument("--emit", choices=sorted(EMIT_NAMES), default=None,
                   help="print this stage to stdout instead of writing an artifact: spec, ir, ir-opt, kernels, "
                        "jax (jaxpr), cpp (host C++), cuda (CUDA C++)")
    b.add_argument("--tune", action="store_true", help="tune the native kernel knobs on this machine first (cached)")
    b.add_argument("--params", type=_model_size, default=None,
                   help="with --tune: representative model size (picks the size bucket; default 4194304)")
    b.add_argument("--cache", type=Path, default=None, help="with --tune: tuning cache file (default: user cache dir)")
    t = sub.add_parser("tune", help="search the target's kernel knobs on this machine and cache the best")
    _add_spec_flags(t)
    t.add_argument("--dtype", choices=PARAM_DTYPES, default="f32", help="param dtype (default f32)")
    t.add_argument("--params", type=_model_size, default=1 << 22, help="representative model size (picks the size bucket)")
    t.add_argument("--cache", type=Path, default=None, help="tuning cache file (default: user cache dir)")
    rb = sub.add_parser("rebuild", help="build an artifact again with this adamgen (same spec, target, dtypes, knobs)")
    rb.add_argument("artifact", type=Path, help="the artifact directory")
    rb.add_argument("-o", "--output", type=Path, default=None, help="write the new artifact here (default: in place)")
    bn = sub.add_parser("bench", help="run the benchmark suite of a source checkout (bench/bench_adam.py)")
    bn.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench/bench_adam.py, e.g. --quick")
    d = sub.add_parser("demo", help="build an artifact, load it in a fresh process and train a small model")
    d.add_argument("--target", choices=TARGETS, default="jax", help="target to demo (default jax)")
    d.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    return parser


def _add_spec_flags(b: argparse.ArgumentParser) -> None:
    for flag, dest, typ, help_ in SPEC_FLAGS:
        b.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    b.add_argument("--amsgrad", action="store_true", default=None, help="use the AMSGrad variant")
    b.add_argument("--use-ema", action="store_true", default=None, help="keep an EMA of the params")
    b.add_argument("--schedule", type=_schedule, default=None,
                   help="learning-rate schedule: a Keras-serialized JSON dict, or NAME:key=value,... "
                        "e.g. CosineDecay:initial_learning_rate=0.01,decay_steps=1000")
    b.add_argument("--from-keras-config", type=Path, default=None, metavar="FILE",
                   help="read the spec from a Keras get_config() / serialize() JSON file; other spec flags override it")
    b.add_argument("--exclude-from-weight-decay", action="append", default=None, metavar="NAME",
                   help="no weight decay for params whose leaf name (the last key of its tree path) matches this "
                        "regular expression (re.search, as Keras' var_names), e.g. bias; repeat for several")
    b.add_argument("--target", choices=TARGETS, default="jax", help="what to compile for (default jax)")


def spec_from_args(args: argparse.Namespace):
    from adamgen.spec import AdamSpec

    kwargs = {}
    if args.from_keras_config is not None:
        try:
            text = args.from_keras_config.read_text()
        except OSError as exc:
            raise ValueError(f"--from-keras-config: cannot read {str(args.from_keras_config)!r}: "
                             f"{exc.strerror or exc}") from None
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--from-keras-config: {str(args.from_keras_config)!r} is not JSON ({exc})") from None
        base = AdamSpec.from_keras_config(config)
        kwargs = dict(base.kwargs())
    for _, dest, _, _ in SPEC_FLAGS:
        if getattr(args, dest) is not None:
            kwargs[dest] = getattr(args, dest)
    for dest in ("amsgrad", "use_ema"):
        if getattr(args, dest):
            kwargs[dest] = True
    if args.exclude_from_weight_decay:
        kwargs["exclude_from_weight_decay"] = list(args.exclude_from_weight_decay)
    if args.schedule is not None:
        if args.learning_rate is not None:
            raise ValueError("--schedule and --learning-rate are exclusive: give one learning rate")
        kwargs["learning_rate"] = args.schedule
    return AdamSpec(**kwargs)


def emit(stage_name: str, spec, target: str, dtype: str) -> str:
    from adamgen.compiler import compile_spec
    from adamgen.ir.printer import print_module

    stage = EMIT_NAMES[stage_name]
    if stage is Stage.SPEC:  # Keras' get_config, and the adamgen keyword it has no key for
        extra = {"exclude_from_weight_decay": list(spec.exclude_from_weight_decay)} if spec.exclude_from_weight_decay else {}
        return json.dumps({**spec.get_config(), **extra}, indent=2) + "\n"
    compiled = compile_spec(spec, dtype, verify=True)
    if stage is Stage.IR:
        return print_module(compiled.ir)
    if stage is Stage.IR_OPT:
        return print_module(compiled.ir_opt)
    if stage is Stage.KERNELS:
        return print_module(compiled.kernels)
    if EMIT_TARGET[stage_name] == "jax":
        from adamgen.backends.jax import emit_jaxpr
        return emit_jaxpr(compiled.kernels) + "\n"
    from adamgen.backends.native import render_source
    return render_source(spec, compiled.kernels, EMIT_TARGET[stage_name])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark script
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if args.steps < 2:
            print("adamgen: error: demo --steps must be at least 2 (it compares the first and last loss)", file=sys.stderr)
            return 2
        if args.target == "cuda":
            from adamgen.backends.native import check_platform
            try:
                check_platform(args.target)  # before building: a cuda demo needs a GPU to run on
            except RuntimeError as exc:
                print(f"adamgen: error: {exc}", file=sys.stderr)
                return 2
        from adamgen.demo import run_demo
        run_demo(args.target, args.steps)
        return 0
    if args.command == "rebuild":
        return _rebuild(args.artifact, args.output)
    try:
        spec = spec_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"adamgen: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "tune":
        return _tune(spec, args)
    if not args.tune and (args.params is not None or args.cache is not None):
        print("adamgen: error: --params and --cache choose what --tune tunes for; give --tune too", file=sys.stderr)
        return 2
    dtypes = tuple(dict.fromkeys(args.dtype or ["f32"]))
    for dtype in dtypes:  # say now, not at the artifact's first init, that a dtype degenerates a hyper-parameter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # printed once, here
            messages = spec.check_param_dtype(dtype)
        for message in messages:
            print(f"adamgen: warning: {message}", file=sys.stderr)
    if args.emit is not None:
        if len(dtypes) > 1:
            print(f"adamgen: error: --emit prints one dtype's {args.emit}; give one --dtype "
                  f"(got {', '.join(dtypes)})", file=sys.stderr)
            return 2
        sys.stdout.write(emit(args.emit, spec, args.target, dtypes[0]))
        return 0
    from adamgen.aot import check_output_dir
    suffix = "" if args.target == "jax" else f"_{args.target}"
    out = args.output or Path("generated") / f"{spec.name}{suffix}"

    def write() -> None:
        check_output_dir(out)  # before any compiling or tuning
        _write(spec, args, out, dtypes)
    return _write_reported(out, write)


def _write_reported(out: Path, write: Callable[[], object],
                    bad_input: tuple[type[Exception], ...] = (ValueError,)) -> int:
    """Run `write` (an artifact into `out`) and print its path: 0; bad input (`bad_input`), a
    missing or failing compiler, or a write the OS refused, printed as an adamgen error: 2, 1, 1."""
    from adamgen.toolchain import ToolchainError

    try:
        write()
    except bad_input as exc:
        print(f"adamgen: error: {exc}", file=sys.stderr)
        return 2
    except ToolchainError as exc:
        print(f"adamgen: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"adamgen: error: cannot write the artifact to {str(out)!r}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _write(spec, args, out: Path, dtypes: tuple[str, ...]) -> None:
    if args.target == "jax":
        from adamgen.aot import write_artifact
        if args.tune:
            from adamgen.tune import tune
            print(f"adamgen: note: --tune leaves the jax artifact as it is: {tune(spec, 'jax').reason}", file=sys.stderr)
        write_artifact(spec, "jax", out, dtypes)
        return
    from adamgen.backends.native_artifact import write_native_artifact
    from adamgen.backends.cpp import CAPABILITIES
    caps, record = CAPABILITIES[args.target], None
    if args.tune:
        from adamgen.tune import tune
        size = {} if args.params is None else {"n_params": args.params}
        result = tune(spec, args.target, dtypes[0], cache_file=args.cache, **size)
        caps, record = result.config.apply(caps), result.record()
        if len(dtypes) > 1:  # one set of knobs serves the artifact's kernels of every dtype
            record["reason"] = " ".join(filter(None, [record["reason"], f"tuned for {dtypes[0]} (the first --dtype); "
                                                      f"the {', '.join(dtypes[1:])} kernels use the same knobs"]))
    write_native_artifact(spec, args.target, out, dtypes, caps=caps, tune_record=record)


def _rebuild(artifact: Path, output: Path | None) -> int:
    from adamgen.aot import rebuild_artifact

    # FileNotFoundError: not an artifact (no manifest.json), said before anything is written
    return _write_reported(output or artifact, lambda: rebuild_artifact(artifact, output),
                           (ValueError, FileNotFoundError))


def _bench(bench_args: list[str]) -> int:
    import subprocess

    script = Path(__file__).resolve().parent.parent / "bench" / "bench_adam.py"
    if not script.is_file():
        print("adamgen: error: the benchmark suite ships with the source checkout (bench/bench_adam.py); "
              "install adamgen from a clone with `pip install -e .`", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *bench_args])


def _tune(spec, args: argparse.Namespace) -> int:
    from adamgen.toolchain import ToolchainError
    from adamgen.tune import tune

    try:
        result = tune(spec, args.target, args.dtype, args.params, cache_file=args.cache)
    except ToolchainError as exc:
        print(f"adamgen: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.record(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
