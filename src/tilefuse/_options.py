"""Typed, validated options: one frozen dataclass per stage, the single source for API and CLI.

Each stage declares its options as a frozen dataclass deriving from
:class:`Options` whose fields are made with :func:`option`.  A field carries
everything both front ends need:

* ``check``: turns a value given in Python into the field's canonical value
  (e.g. ``2`` -> ``(2.0, 2.0, 2.0)``) or raises :class:`~tilefuse.errors.OptionError`
  with the reason in plain words;
* ``parse``: turns the text typed on the command line into a value for ``check``
  (by default derived from the default value's type);
* ``help``, ``flag``, ``metavar``, ``choices``, ``flags`` (several flags, each
  setting one value) for the command line, which builds its arguments from the
  fields (``tilefuse.cli``) instead of repeating them.

The dataclass validates every field once, when it is made, so a stage never
sees an unchecked value; :meth:`Options.replace` makes a changed copy through
the same checks.  Errors name the field in the caller's terms: the Python
name for API callers, and the CLI translates it to the flag.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import OptionError

__all__ = [
    "Options", "option", "number", "choice", "per_axis", "optional", "numeric_dtype", "text",
    "parse_numbers", "parse_number", "parse_whole", "OPTION_DTYPES",
]

#: Pixel types an output may have: the ten BDV / N5 / OME-Zarr numeric types.
OPTION_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")


def option(default: Any, *, help: str, check: Callable[[Any], Any] | None = None,
           parse: Callable[[str], Any] | None = None, flag: str | None = None, metavar: str | None = None,
           choices: Sequence[Any] | None = None, flags: dict[str, Any] | None = None, cli: bool = True,
           example: str | None = None) -> Any:
    """A dataclass field of an :class:`Options` class, with what validation and the CLI need.

    Parameters
    ----------
    default
        The default value (already canonical).
    help : str
        One line for ``--help`` and the docs.
    check : callable, optional
        ``value -> canonical value``; raises :class:`OptionError` (or ValueError/TypeError,
        which are wrapped) on a bad value.  Default: keep the value.
    parse : callable, optional
        ``text -> value`` for the command line (then passed through ``check``).
    flag : str, optional
        The command-line flag, default ``--`` + the name with dashes.  For a
        ``bool`` field the flag sets ``not default``.
    metavar, choices
        For ``--help``; ``choices`` are also checked by the default ``check``.
    flags : dict, optional
        Several mutually exclusive flags, each setting a value, instead of ``flag``.
    cli : bool
        False keeps the field out of the command line (Python-only values).
    example : str, optional
        A valid non-default command-line value, for the test that walks every flag.
    """
    if check is None and choices is not None:
        check = choice(choices)
    metadata = {"help": help, "check": check, "parse": parse, "flag": flag, "metavar": metavar,
                "choices": tuple(choices) if choices is not None else None, "flags": flags, "cli": cli,
                "example": example}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable")
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of the per-stage option classes: validates every field when made."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, f.name)
            try:
                checked = check(value)
            except OptionError as exc:
                raise OptionError(f.name, exc.reason) from None
            except (TypeError, ValueError) as exc:
                raise OptionError(f.name, f"{exc} (got {value!r})") from None
            object.__setattr__(self, f.name, checked)
        self._check_together()

    def _check_together(self) -> None:
        """Checks that involve several fields (subclasses override)."""

    def replace(self, **changes) -> Options:
        """A copy with some fields changed (checked like a new instance)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise OptionError(sorted(unknown)[0], f"not an option of {type(self).__name__} "
                                                  f"(options: {', '.join(f.name for f in dataclasses.fields(self))})")
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, options: Options | None = None, **changes) -> Options:
        """``options`` (or the defaults) with ``changes`` applied: how functions taking both build theirs."""
        if options is not None and not isinstance(options, cls):
            raise OptionError("options", f"expected {cls.__name__}, got {type(options).__name__}")
        return (options or cls()).replace(**changes) if changes else (options or cls())

    def as_dict(self) -> dict[str, Any]:
        """Field values as plain JSON-friendly Python values (tuples become lists, dtypes names)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# -- checks ------------------------------------------------------------------------------------
def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           integer: bool = False) -> Callable[[Any], float | int]:
    """A finite number within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); ``integer`` for whole numbers."""

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise OptionError("", f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise OptionError("", f"must be a finite number, got {value!r}")
        if integer:
            if float(value) != int(value):
                raise OptionError("", f"must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise OptionError("", f"must be {'greater than' if lo_open else 'at least'} {lo:g}, got {value:g}")
        if hi is not None and value > hi:
            raise OptionError("", f"must be at most {hi:g}, got {value:g}")
        return value

    return check


def choice(choices: Sequence[Any]) -> Callable[[Any], Any]:
    """One of ``choices``."""

    def check(value):
        if value not in choices:
            raise OptionError("", f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return check


def per_axis(check: Callable[[Any], Any], counts: Sequence[int] = (1, 3), *,
             names: str = "z,y,x") -> Callable[[Any], tuple]:
    """A value per axis: a sequence of one of ``counts`` lengths, each item checked.

    One value given where three are wanted is repeated, so ``2`` and ``(2,)``
    mean ``(2, 2, 2)`` when ``1`` is among ``counts`` and the largest count is 3.
    """
    full = max(counts)

    def check_all(value):
        several = isinstance(value, (tuple, list, np.ndarray))
        items = tuple(value) if several else (value,)
        if len(items) not in counts:
            wanted = " or ".join(str(c) for c in counts)
            raise OptionError("", f"needs {wanted} numbers ({names}), got {len(items)}: {value!r}")
        checked = []
        for item in items:
            try:
                checked.append(check(item))
            except OptionError as exc:
                raise OptionError("", f"{exc.reason} in {tuple(items)!r}" if several else exc.reason) from None
        if len(checked) == 1 and 1 in counts and full > 1:
            checked = checked * full
        return tuple(checked)

    return check_all


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """None, or a value passing ``check``."""
    return lambda value: None if value is None else check(value)


def numeric_dtype(value) -> np.dtype:
    """A pixel type the outputs can hold (:data:`OPTION_DTYPES`)."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in OPTION_DTYPES:
        raise OptionError("", f"must be one of {', '.join(OPTION_DTYPES)}, got {value!r}")
    return dtype


def text(value) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise OptionError("", f"must be a non-empty text, got {value!r}")
    return value.strip()


# -- parsing command-line text ----------------------------------------------------------------
def parse_numbers(text_value: str, kind: type = float) -> tuple:
    """``"1,2,3"`` or ``"1x2x3"`` (or one number) -> a tuple of numbers; bad text -> OptionError."""
    parts = [p for p in str(text_value).replace("x", ",").split(",") if p.strip()]
    if not parts:
        raise OptionError("", f"needs numbers such as 1,2,3, got {text_value!r}")
    try:
        return tuple(kind(p) if kind is float else _whole(p) for p in parts)
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise OptionError("", f"needs {what} separated by commas, got {text_value!r}") from None


def parse_number(text_value: str) -> float:
    """One number typed on the command line (``"0.5"``, ``"1e-3"``)."""
    try:
        return float(text_value)
    except ValueError:
        raise OptionError("", f"must be a number, got {text_value!r}") from None


def parse_whole(text_value: str) -> int:
    """One whole number typed on the command line."""
    try:
        return _whole(text_value)
    except ValueError:
        raise OptionError("", f"must be a whole number, got {text_value!r}") from None


def _whole(text_value: str) -> int:
    value = float(text_value)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(text_value)
    return int(value)
