"""The one reader of the JSON files a command reads: plans, dataset.json, label conventions, bundle metadata,
slice indexes, checkpoint sidecars.

A JSON file that is cut short, hand-edited into invalid JSON, or of the wrong shape is a bad input: the
caller's ``InputError`` (sub)class names the file and the problem (exit code 2 on the command line), never
a bare ``JSONDecodeError`` or ``KeyError`` deep inside a run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Tuple, Type, Union

from OrganGuidanceLib.validation import InputError

Expected = Optional[Union[type, Tuple[type, ...]]]
_JSON_NAMES = ((bool, "true/false value"), (dict, "object"), (list, "array"), (str, "string"), (int, "number"),
               (float, "number"), (type(None), "null"))


def json_type_name(value_or_type: Any) -> str:
    """JSON's name of a Python value or type: ``{}`` / ``dict`` -> "object", ``[]`` / ``list`` -> "array"."""
    kind = value_or_type if isinstance(value_or_type, type) else type(value_or_type)
    return next((name for python, name in _JSON_NAMES if issubclass(kind, python)), kind.__name__)


def _expected_names(expect: Expected) -> str:
    types = expect if isinstance(expect, tuple) else (expect,)
    return " or ".join(dict.fromkeys(json_type_name(t) for t in types))


def _is_expected(value: Any, expect: Expected) -> bool:
    if expect is None:
        return True
    types = expect if isinstance(expect, tuple) else (expect,)
    if isinstance(value, bool) and bool not in types:  # JSON true/false is not a number
        return False
    return isinstance(value, types)


def _ends_inside_a_value(text: str) -> bool:
    """True when ``text`` stops inside a string, object or array: a file cut short (not one edited wrong)."""
    depth, in_string, escaped = 0, False, False
    for character in text:
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "{[":
            depth += 1
        elif character in "}]":
            depth -= 1
    return in_string or depth > 0


def read_json(path: Union[str, Path], expect: Expected = dict, error: Type[InputError] = InputError) -> Any:
    """The JSON value in ``path``; ``error`` naming the file when it is missing, unreadable, not valid JSON
    (with the line and column, and whether the file ends early) or not of the type ``expect`` (None: any)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some Windows editors) is no error
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a JSON file") from None
    except UnicodeDecodeError as problem:
        byte = problem.object[problem.start]
        raise error(f"{path}: is not valid JSON (not UTF-8 text: byte {problem.start} is 0x{byte:02x})") from None
    except OSError as problem:
        raise error(f"{path}: cannot be read ({problem.strerror or problem})") from problem
    if not text.strip():
        raise error(f"{path}: is not valid JSON (the file is empty)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as problem:
        early = "; the file ends early: cut short by an interrupted copy or write?" \
            if problem.pos >= len(text.rstrip()) or _ends_inside_a_value(text) else ""
        what = problem.msg.removesuffix(" starting at")  # the position is given as line and column
        raise error(f"{path}: is not valid JSON (line {problem.lineno}, column {problem.colno}: {what}{early})") \
            from None
    except RecursionError:
        raise error(f"{path}: is not valid JSON (nested too deeply)") from None
    if not _is_expected(data, expect):
        raise error(f"{path}: holds a JSON {json_type_name(data)}, expected a JSON {_expected_names(expect)}")
    return data


def json_field(data: dict, key: str, path: Union[str, Path], expect: Expected = dict,
               error: Type[InputError] = InputError, where: str = "") -> Any:
    """``data[key]`` of the JSON file ``path``; ``error`` naming the file and key when it is missing or not
    of the type ``expect``. ``where`` names the enclosing keys in the message (e.g. ``"agcrc."``)."""
    if not isinstance(data, dict) or key not in data:
        raise error(f"{path}: '{where}{key}' is missing")
    value = data[key]
    if not _is_expected(value, expect):
        raise error(f"{path}: '{where}{key}' is a JSON {json_type_name(value)}, expected a JSON "
                    f"{_expected_names(expect)}")
    return value
