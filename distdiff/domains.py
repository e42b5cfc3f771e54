"""The domain of a numeric setting, declared where its flag is defined.

`Number(int, low=1)` is an argparse `type`: it converts the text, refuses NaN and infinities and
values outside the range, and describes itself for `--help` and for the error. The same check
runs on values from a YAML config (distdiff.config.check_config_values), so the command line and
the configs share one domain. `OneLineParser` turns every argparse error into a DistDiffError,
which the scripts print as one `error:` line (distdiff.options.run_cli), instead of a usage wall.
Cross-field rules (the guidance step inside the denoised steps, split < total_split, ...) are
checked where both values are known, before any model loads.
"""
import argparse
import math

from distdiff import DistDiffError


class Number:
    """A finite int or float within [low, high] (ends open where asked), optionally a multiple."""

    def __init__(self, kind, low=None, high=None, *, low_open=False, high_open=False, multiple_of=None):
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open, self.multiple_of = low_open, high_open, multiple_of
        self.__name__ = "integer" if kind is int else "number"  # argparse names the type in its errors

    def describe(self):
        """The domain in words, e.g. 'an integer >= 1' or 'a number in (0, 1]'."""
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            what += f" {'<' if self.high_open else '<='} {self.high:g}"
        return what + (f", a multiple of {self.multiple_of}" if self.multiple_of else "")

    def __call__(self, value):
        try:
            number = self._convert(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{value!r} is not {self.describe()}") from None
        if not self.contains(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not {self.describe()}")
        return number

    def _convert(self, value):
        if isinstance(value, bool):
            raise TypeError
        if self.kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
        if not math.isfinite(number):
            raise ValueError
        return number

    def contains(self, number):
        """Whether a converted value lies in the domain."""
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            return False
        return not (self.multiple_of and number % self.multiple_of)


# The common domains, shared by every parser.
COUNT = Number(int, 1)                      # steps, sizes, repeats, shards: at least one
INDEX = Number(int, 0)                      # indices, seeds, threads (0: torch's default)
FINITE = Number(float)                      # any finite number (guidance scales and weights)
RATE = Number(float, 0, low_open=True)      # learning rates
NON_NEGATIVE = Number(float, 0)             # weights, decays, magnitudes
DEGREES = Number(float, 0, 180)             # rotation augmentations


def with_domain(kwargs):
    """add_argument kwargs with the domain of a Number `type` appended to the help text."""
    kind = kwargs.get("type")
    if isinstance(kind, Number) and "help" in kwargs:
        kwargs = dict(kwargs, help=f"{kwargs['help']} ({kind.describe()})")
    return kwargs


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: a DistDiffError naming the flag, the value and
    the domain (run_cli prints it as `error: ...` and exits 1); --help still exits 0."""

    def error(self, message):
        raise DistDiffError(f"{message} (see {self.prog} --help)")
