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
import re

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


class OrAuto(Number):
    """`auto`, or a number in the domain (--batch_size, --workers, --cache_mb)."""

    def describe(self):
        return "auto or " + super().describe()

    def __call__(self, value):
        return "auto" if str(value).strip().lower() == "auto" else super().__call__(value)


class Text:
    """A non-empty text (paths, names, ids), or one that matches a pattern: an empty `--out ""` would
    otherwise mean the working directory."""

    def __init__(self, pattern=None, describe=None, empty=False):
        self.pattern, self._describe = (re.compile(pattern) if pattern else None), describe
        self.empty = empty
        self.__name__ = "text"

    def describe(self):
        return self._describe or ("any text, empty included" if self.empty else "a non-empty text")

    def __call__(self, value):
        text = str(value)
        if self.empty and not self.pattern:
            return text
        if not text.strip() or (self.pattern and not self.pattern.fullmatch(text.strip())):
            raise argparse.ArgumentTypeError(f"{value!r} is not {self.describe()}")
        return text.strip() if self.pattern else text


class Bool:
    """True or False, read from the authors' 'True'/'False' strings (and 1/0, yes/no)."""
    __name__ = "bool"

    def describe(self):
        return "True or False"

    def __call__(self, value):
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in ("true", "1", "yes", "y"):
            return True
        if lowered in ("false", "0", "no", "n"):
            return False
        raise argparse.ArgumentTypeError(f"{value!r} is not True or False")


# The common domains, shared by every parser.
COUNT = Number(int, 1)                      # steps, sizes, repeats, shards: at least one
INDEX = Number(int, 0)                      # indices, seeds, threads (0: torch's default)
FINITE = Number(float)                      # any finite number (guidance scales and weights)
RATE = Number(float, 0, low_open=True)      # learning rates
NON_NEGATIVE = Number(float, 0)             # weights, decays, magnitudes
DEGREES = Number(float, 0, 180)             # rotation augmentations
BOOL = Bool()
TEXT = Text()                               # paths, names, ids: anything but empty
ANY_TEXT = Text(empty=True)                 # extra flags passed on ("" = none)
DEVICE = Text(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:<i>")
GPU_INDEX = Text(r"\d+|cpu", "a GPU index (0, 1, ...) or cpu")


def with_domain(kwargs):
    """add_argument kwargs with the domain of a Number or patterned Text `type` appended to the
    help text (once: a second call changes nothing)."""
    kind = getattr(kwargs.get("type"), "domain", kwargs.get("type"))  # a positional twin's wrapper: its domain
    shown = isinstance(kind, (Number, Bool)) or (isinstance(kind, Text) and (kind.pattern or kind.empty))
    text = kwargs.get("help")
    if shown and text != argparse.SUPPRESS and kind.describe() not in (text or ""):
        kwargs = dict(kwargs, help=f"{text} ({kind.describe()})" if text else f"({kind.describe()})")
    return kwargs


VALUE_ACTIONS = (None, "store", "append", "extend")  # the argparse actions that read a value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: a DistDiffError naming the flag, the value and
    the domain (run_cli prints it as `error: ...` and exits 1); --help still exits 0.

    Every flag that reads a value has a domain: a flag declared without a type or choices reads a
    non-empty text (TEXT); `empty_ok=True` lets a flag take "" (a flag whose default is "")."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("epilog", "Each setting's domain is in parentheses after its help; one shown without a domain "
                                    "or choices takes a non-empty text.")
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, empty_ok=False, **kwargs):
        if kwargs.get("action") in VALUE_ACTIONS and kwargs.get("type") in (None, str) and not kwargs.get("choices") \
                and kwargs.get("nargs") != 0:
            kwargs["type"] = ANY_TEXT if empty_ok else TEXT
        return super().add_argument(*args, **with_domain(kwargs))

    def error(self, message):
        raise DistDiffError(f"{message} (see {self.prog} --help)")
