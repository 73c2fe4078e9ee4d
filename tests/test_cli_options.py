"""Every command-line option of every subcommand reaches the function it configures.

The flags are made from the option classes' fields (tilefuse._cliargs); this walks each field
of each subcommand, gives the flag its example value, runs the command with the library's entry
points replaced by recorders, and checks the options object they received holds that value
(and that it differs from the default, so the check can fail).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from tilefuse import cli
from tilefuse._cliargs import option_fields
from tilefuse.cli import SUBCOMMAND_OPTIONS, _option_classes, build_parser, main
from tilefuse.demo import make_sample_project

#: What each subcommand hands its options to: (module, function, how to find the options in the call).
RECEIVERS = {
    "registration": ("tilefuse.registration.api", "register"),
    "intensity": ("tilefuse.intensity", "match_intensities"),
    "fusion": ("tilefuse.fusion.api", "plan_fusion"),
    "output": ("tilefuse.writers.fused", "write_fused"),
    "sample": ("tilefuse.demo", "make_sample_project"),
    "convert": ("tilefuse.convert", "convert_tiffs"),
    "detection": ("tilefuse.interestpoints.detection", "detect"),
    "matching": ("tilefuse.interestpoints.matching", "match"),
}
#: Flags of each subcommand that are not option fields (its own arguments), tested elsewhere.
OWN_FLAGS = {
    "demo": {"--overwrite"}, "sample": {"--overwrite"}, "info": {"--plot", "--views", "--overwrite"},
    "convert": {"-o", "--overwrite"}, "register": {"-o", "--plot", "--overwrite", "--label"},
    "detect": {"-o", "--overwrite", "--label"}, "match": {"--plot", "--overwrite", "--label"},
    "intensity": {"-o", "--overwrite"}, "fuse": {"--preview"},
    "run": {"--no-register", "--match-intensity", "--preview"},
}
COMMON = {"-h", "-v", "-q", "--debug"}


class _Reached(Exception):
    """Stops a command once the options have been handed over."""


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("options")
    make_sample_project(folder, grid=(1, 2), tile_shape=(32, 32))
    return folder / "dataset.xml"


def _argv(command: str, sample: Path, tmp: Path) -> list[str]:
    return {
        "demo": ["demo", str(tmp / "demo")],
        "sample": ["sample", str(tmp / "s")],
        "convert": ["convert", str(tmp), str(tmp / "pos.csv"), "-o", str(tmp / "c" / "d.xml")],
        "register": ["register", str(sample), "-o", str(tmp / "r.xml")],
        "detect": ["detect", str(sample), "-o", str(tmp / "d.xml")],
        "match": ["match", str(sample)],
        "intensity": ["intensity", str(sample), "-o", str(tmp / "i.xml")],
        "fuse": ["fuse", str(sample), str(tmp / "f.ome.zarr")],
        "run": ["run", str(sample), str(tmp / "run.ome.zarr")],
    }[command]


def _cases():
    classes = _option_classes()
    for command, groups in SUBCOMMAND_OPTIONS.items():
        for prefix, _ in groups:
            for f in option_fields(classes[prefix]):
                flags = f.metadata.get("flags")
                if flags:
                    for flag, value in flags.items():
                        yield command, prefix, f.name, [flag], value
                elif isinstance(f.default, bool):
                    yield command, prefix, f.name, [f.metadata.get("flag") or "--" + f.name.replace("_", "-")], \
                        not f.default
                else:
                    example = f.metadata.get("example")
                    assert example is not None, f"{classes[prefix].__name__}.{f.name} has no example value"
                    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                    yield command, prefix, f.name, [flag, example], None


CASES = list(_cases())


@pytest.mark.parametrize("command,prefix,name,flag,value", CASES,
                         ids=[f"{c}:{' '.join(fl)}" for c, _, _, fl, _ in CASES])
def test_every_option_reaches_its_stage(sample, tmp_path, monkeypatch, command, prefix, name, flag, value):
    import importlib

    classes = _option_classes()
    cls = classes[prefix]
    received = {}

    real_sample = importlib.import_module("tilefuse.demo").make_sample_project

    def recorder(key):
        def record(*args, **kwargs):
            options = kwargs.get("options")
            if options is None:  # positional: the first argument that is an Options object
                options = next((a for a in args if isinstance(a, tuple(classes.values()))), None)
            for k in ("registration", "fusion", "writing", "detection", "matching"):  # register's and run's keywords
                if kwargs.get(k) is not None:
                    received[{"writing": "output"}.get(k, k)] = kwargs[k]
            if options is not None:
                received[key] = options
            if key in (prefix, "run"):
                raise _Reached
            # An earlier stage than the one under test: let the command go on.
            if key == "fusion":
                return SimpleNamespace(timepoints=[0], channels=[0], shape=(1, 8, 8), voxel_size=(1, 1, 1),
                                       unit="µm")
            if key == "sample":
                small = classes["sample"](grid=(1, 2), tile_shape=(32, 32))
                return real_sample(args[0], small, overwrite=kwargs.get("overwrite", False))
            raise _Reached

        return record

    for key, (module, function) in RECEIVERS.items():
        monkeypatch.setattr(importlib.import_module(module), function, recorder(key))
    monkeypatch.setattr("tilefuse.pipeline.run", recorder("run"))

    @contextlib.contextmanager
    def cluster(scheduler=None, workers=None):
        received["cluster"] = classes["cluster"](workers=workers, scheduler=scheduler)
        yield None

    monkeypatch.setattr("tilefuse.pipeline.cluster_client", cluster)
    if command == "convert":
        (tmp_path / "pos.csv").write_text("file,x,y\nt0.tif,0,0\n")
    status = main(_argv(command, sample, tmp_path) + flag + ["-q"])
    assert status in (0, 1), f"{command} {' '.join(flag)}: exit {status}"
    assert prefix in received, f"{command} {' '.join(flag)}: the {cls.__name__} never reached its stage"
    got = getattr(received[prefix], name)
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if value is None:  # an example value, parsed as the command line parses it
        parser = argparse.ArgumentParser()
        from tilefuse._cliargs import add_options

        add_options(parser, cls, "x", "p")
        value = getattr(parser.parse_args(flag), f"p__{name}")
    assert got == value, f"{command} {' '.join(flag)}: {cls.__name__}.{name} is {got!r}, expected {value!r}"
    assert got != field.default, f"{cls.__name__}.{name}: the example equals the default, the test cannot fail"


def test_no_flag_escapes_the_walk():
    """A flag that is neither an option field nor listed as the command's own is caught here."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    walked = {(c, fl[0]) for c, _, _, fl, _ in CASES}
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and len(flag) > 2 and action.option_strings[0] != flag:
                    continue  # a long alias of a short flag (-o/--output, -q/--quiet)
                assert (command, flag) in walked or flag in OWN_FLAGS[command] | COMMON, \
                    f"tilefuse {command} {flag}: not an option field and not known as the command's own"


def test_bad_values_are_reported_in_cli_words(sample, tmp_path, capsys):
    """The issue's examples: argparse-style errors naming the flag, exit 2, no traceback."""
    cases = [
        (["fuse", str(sample), str(tmp_path / "f.ome.zarr"), "--dtype", "foo"], "--dtype: must be one of"),
        (["fuse", str(sample), str(tmp_path / "f.ome.zarr"), "--chunks", "1,0,5"], "--chunks: must be at least 1"),
        (["fuse", str(sample), str(tmp_path / "f.ome.zarr"), "--downsample", "1,2"],
         "--downsample: needs 1 or 3 numbers"),
        (["convert", str(tmp_path), str(tmp_path / "p.csv"), "-o", str(tmp_path / "o.xml"), "--voxel-size", "abc"],
         "--voxel-size: needs numbers separated by commas, got 'abc'"),
        (["convert", str(tmp_path), str(tmp_path / "p.csv"), "-o", str(tmp_path / "o.xml"), "--voxel-size",
          "1,2,3,4"], "--voxel-size: needs 2 or 3 numbers ([z,]y,x), got 4"),
        (["intensity", str(sample), "--downsample", "0"], "--downsample: must be greater than 0, got 0"),
        (["register", str(sample), "--min-overlap", "2"], "--min-overlap: must be at most 1, got 2"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and "Traceback" not in err, (argv, err)
    # a check across fields, found after parsing: the flag is named too
    assert main(["fuse", str(sample), str(tmp_path / "f.ome.zarr"), "--workers", "2", "--scheduler", "tcp://x:1"]) == 2
    assert "--workers: give workers or a scheduler, not both" in capsys.readouterr().err


def test_quiet_prints_nothing(sample, tmp_path, capsys):
    assert main(["fuse", str(sample), str(tmp_path / "f.ome.zarr"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert main(["register", str(sample), "-o", str(tmp_path / "r.xml"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_cli_module_is_not_imported_by_the_library():
    """Nothing imports the CLI: the command line sits on top."""
    import subprocess
    import sys

    code = ("import sys, tilefuse, tilefuse.pipeline, tilefuse.demo, tilefuse.convert; "
            "print('tilefuse.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert cli.__name__ == "tilefuse.cli"
