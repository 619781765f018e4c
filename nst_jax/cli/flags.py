"""The command lines' flags: argparse with one-line errors, value types that check as they parse,
and flags generated from a dataclass's declared fields (Settings and VideoSettings alike)."""

import argparse
import dataclasses
import difflib
import os
import re
import typing
from typing import Any, List, NoReturn, Optional, Sequence

from nst_jax.config.settings import AUTO, Range, flag
from nst_jax.errors import UserInputError


class OneLineParser(argparse.ArgumentParser):
    """argparse without abbreviations, whose errors are one line naming the flag, not a usage dump.

    Errors raise UserInputError, which main prints as `error: ...` with exit status 2.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)  # --num-step must not pass for --num-steps

    def error(self, message: str) -> NoReturn:
        raise UserInputError(self._one_line(message))

    def _one_line(self, message):
        message = " ".join(message.split())
        argument = re.fullmatch(r"argument (\S+): (.*)", message)
        if argument:
            return f"{argument.group(1)}: {argument.group(2)}"
        unknown = re.fullmatch(r"unrecognized arguments: (.*)", message)
        if unknown:
            first = unknown.group(1).split()[0]
            if not first.startswith("-"):
                return f"{first}: unexpected argument; {self._usage_line()}"
            flag = first.split("=", 1)[0]
            close = difflib.get_close_matches(flag, list(self._option_string_actions), n=1)
            return f"{flag}: unknown flag" + (f" (did you mean {close[0]}?)" if close else "; --help lists them")
        missing = re.fullmatch(r"the following arguments are required: (.*)", message)
        if missing:
            return f"{missing.group(1)}: missing; {self._usage_line()}"
        return message

    def _usage_line(self) -> str:
        """'usage: …' on one line (the usage given, or argparse's own)."""
        return " ".join(self.format_usage().split())


def number(kind: type) -> Any:
    """argparse type for an int or float flag (ranges are checked after parsing)."""
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
    parse.__name__ = kind.__name__
    vars(parse).update(kind=kind, is_list=False)  # lets tests find every numeric flag in the parser
    return parse


def number_or_auto(kind: type) -> Any:
    """argparse type for a number flag that also takes "auto" (resolved once the images are known)."""
    parsed = number(kind)

    def parse(text):
        return AUTO if text.strip().lower() == AUTO else parsed(text)
    parse.__name__ = parsed.__name__
    vars(parse).update(kind=kind, is_list=False)
    return parse



def _items(text):
    """The comma-separated items of a list flag, stripped: "a, b,c" -> ["a", "b", "c"]; "" -> []
    (the settings' checks then say what an empty list means for that flag). An empty item
    ("1,,2", "1,2,") is refused: a value was most likely left out."""
    if not text.strip():
        return []
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item (two commas, or one at an end)")
    return items


def comma_list(kind: type) -> Any:
    """argparse type for a comma-separated list flag: "1, 2,3" -> (1.0, 2.0, 3.0)."""
    def parse(text):
        items = _items(text)
        try:
            return tuple(kind(item) for item in items)
        except ValueError:
            kinds = {int: "integers", float: "numbers"}[kind]
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kinds}") from None
    parse.__name__ = f"list of {kind.__name__}"
    vars(parse).update(kind=kind, is_list=True)
    return parse


def names(text: str) -> Any:
    """argparse type for a list of layer names: "relu1_1, relu2_1" -> ("relu1_1", "relu2_1")."""
    return tuple(_items(text))


# Values argparse would take for flags: -1,2 and -1e3 and -inf (it only knows -1 and -1.5).
_NEGATIVE_NUMBER = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def keep_negative_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> List[str]:
    """`--flag -1,2` -> `--flag=-1,2`, so a negative value reaches our checks (and their message)."""
    takes_value = {option for action in parser._actions if action.option_strings and action.nargs is None
                   for option in action.option_strings}
    kept: List[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return kept + list(argv[index:])
        if kept and kept[-1] in takes_value and _NEGATIVE_NUMBER.match(arg):
            kept[-1] = f"{kept[-1]}={arg}"
        else:
            kept.append(arg)
    return kept


def field_type(field: dataclasses.Field) -> Any:
    """(scalar type, is_list) of a Settings group's field: Optional[...] unwrapped, Tuple[X, ...] -> (X, True)."""
    annotation = field.type
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def shown(value: Any) -> str:
    """A default as --help shows it: floats in 6 digits (1/255000, not 3.92156862745098e-06)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_field_flag(group: Any, name: str, field: dataclasses.Field, default: Any, text: Optional[str],
                   allowed: Optional[Range] = None, choices: Optional[Sequence[str]] = None,
                   takes_auto: bool = False, metavar: Optional[str] = None) -> None:
    """--NAME for a dataclass field: its type (number, list, switch, choice) from the annotation,
    its range and default in the help. Values are parsed, not checked: the dataclass checks itself."""
    scalar, is_list = field_type(field)
    text = text or name.replace("_", " ")
    if allowed is not None:
        text += f" ({'each ' if is_list else ''}{allowed})"
    if default is not None:
        text += f" [{','.join(map(shown, default)) if isinstance(default, tuple) else shown(default)}]"
    kwargs: dict = {"default": None, "help": text}
    if choices is not None and not is_list:
        kwargs["choices"] = choices
    elif scalar is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif is_list:
        kwargs["type"] = comma_list(scalar) if scalar in (int, float) else names
    elif scalar in (int, float):
        kwargs["type"] = (number_or_auto if takes_auto else number)(scalar)
    if "choices" not in kwargs and scalar is not bool:
        kwargs["metavar"] = metavar or ("LIST" if is_list else {int: "N", float: "X"}.get(scalar, "VALUE"))
    group.add_argument("--" + flag(name), **kwargs)


def same_path(first: Any, second: Any) -> bool:
    """Whether two paths name one file (after ~ and symlinks)."""
    return os.path.realpath(os.path.expanduser(str(first))) == os.path.realpath(os.path.expanduser(str(second)))
