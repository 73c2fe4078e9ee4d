"""Command-line arguments made from the stages' option classes (part of the CLI layer).

:func:`add_options` turns the fields of an :class:`~tilefuse._options.Options`
class into argparse arguments (flag, type, choices, help and example come from
the field), and :func:`options_from` builds the options object from the parsed
arguments.  A value is checked when it is parsed, so a bad one is reported by
argparse in the command line's words (``argument --blend-range: must be at
least 0, got -1``); checks across fields name the flag too (see
:func:`flag_names`).  Arguments not given keep the class's defaults: the
command line and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ._options import Options, parse_number, parse_whole
from .errors import OptionError

__all__ = ["add_options", "options_from", "flag_names", "option_fields"]

_DEST = "{prefix}__{name}"


def option_fields(cls: type[Options]) -> list[dataclasses.Field]:
    """The fields of ``cls`` that the command line sets."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_names(cls: type[Options]) -> dict[str, str]:
    """Field name -> its flag(s) as the command line spells them (``"--resume/--no-resume"``)."""
    out = {}
    for f in option_fields(cls):
        flags = f.metadata.get("flags")
        out[f.name] = "/".join(flags) if flags else _flag(f)
    return out


def _converter(f: dataclasses.Field):
    """``text -> checked value`` for argparse; bad text becomes argparse's error, in CLI words."""
    parse = f.metadata.get("parse")
    if parse is None:
        kind = type(f.default)
        if kind not in (str, int, float):
            raise TypeError(f"option {f.name!r} needs a parse function for the command line")
        parse = {str: str, int: parse_whole, float: parse_number}[kind]
    check = f.metadata.get("check") or (lambda value: value)

    def convert(text: str):
        try:
            return check(parse(text))
        except OptionError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{exc} (got {text!r})") from None

    convert.__name__ = f.name  # argparse names the converter in some messages
    return convert


def add_options(parser: argparse.ArgumentParser, cls: type[Options], title: str, prefix: str) -> None:
    """Add one argument group with a flag per field of ``cls``."""
    group = parser.add_argument_group(title)
    for f in option_fields(cls):
        dest = _DEST.format(prefix=prefix, name=f.name)
        help_text = f.metadata["help"]
        flags = f.metadata.get("flags")
        if flags:
            exclusive = group.add_mutually_exclusive_group()
            for flag, value in flags.items():
                exclusive.add_argument(flag, dest=dest, action="store_const", const=value,
                                       default=argparse.SUPPRESS, help=help_text if flag == next(iter(flags)) else None)
            continue
        if isinstance(f.default, bool):
            group.add_argument(_flag(f), dest=dest, action="store_false" if f.default else "store_true",
                               default=argparse.SUPPRESS, help=help_text)
            continue
        choices = f.metadata.get("choices")
        group.add_argument(_flag(f), dest=dest, type=_converter(f), default=argparse.SUPPRESS, help=help_text,
                           metavar=f.metadata.get("metavar") or ("{" + ",".join(map(str, choices)) + "}"
                                                                 if choices else None))


def options_from(args: argparse.Namespace, cls: type[Options], prefix: str, **fixed: Any) -> Options:
    """The ``cls`` options the command line gave (the rest default), plus ``fixed`` values.

    An error across fields names the flags (``--chunks: ...``).
    """
    given = {}
    for f in option_fields(cls):
        dest = _DEST.format(prefix=prefix, name=f.name)
        if hasattr(args, dest):
            given[f.name] = getattr(args, dest)
    given.update(fixed)
    try:
        return cls(**given)
    except OptionError as exc:
        raise OptionError(flag_names(cls).get(exc.option, exc.option), exc.reason) from None
