"""Sizes checked before a template builds a value, from the operands alone, so that a value too large for the
budget is refused instead of allocated: `'a' * 10**10`, `s.ljust(10**10)`, `[big] * 100000 | join`.

Covered: the operators `*`, `**`, `+`, `%` and `~`; the string methods that can make more than they are given
(`ljust`, `rjust`, `center`, `zfill`, `expandtabs`, `replace`, `join`, `format`, `format_map`, `translate`); the
filters that can (`center`, `indent`, `format`, `join`, `replace`, `wordwrap`, `batch`, `slice`, `tojson`);
and the `lipsum` global. Everything else makes values in proportion to what it is given, which is bounded
in turn, and every result that is a string is measured after the fact as well (`environment`).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from .limits import Budget, LimitExceeded

MAX_ITEMS = 1_000_000  # a list a template builds (`*`, `+`, `batch`, `slice`)
MAX_INT_BITS = 1 << 16  # an integer a template computes (`*`, `**`)
MAX_JSON_INDENT = 32  # `tojson(indent=...)`: templates use 2 or 4; each level of nesting repeats it per line
_NUMBER = re.compile(r"\d+")


def refuse(detail: str) -> LimitExceeded:
    return LimitExceeded("template_output_too_large", detail)


def check_binop(budget: Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                _check_length(budget, sequence, len(sequence) * times, "repeated by *")
        if _integers(left, right):
            _check_bits(left.bit_length() + right.bit_length(), "*")
    elif operator == "**":
        if _integers(left, right) and right > 0 and abs(left) > 1:
            _check_bits(right * abs(left).bit_length(), "**")
    elif operator == "+":
        if (isinstance(left, str) and isinstance(right, str)) or _sequences(left, right):
            _check_length(budget, left, len(left) + len(right), "joined by +")
    elif operator == "%" and isinstance(left, str):
        check_format(budget, left, right if isinstance(right, tuple) else (right,), {})


def check_concat(budget: Budget, parts: list[str]) -> None:
    budget.check_size(sum(map(len, parts)), "a string joined by ~")


def check_format(budget: Budget, template: str, args: Any, kwargs: dict[str, Any]) -> None:
    """A format string (`%` or `str.format`) may not ask for a width or precision above the limit, written in it
    or taken from the arguments (`%*s`, `{:{}}`)."""
    limit = budget.limits.max_chars
    widths = [int(n) if len(n) < 12 else limit + 1 for n in _NUMBER.findall(template)]
    if "*" in template or "{" in template.replace("{{", ""):
        values = [*args, *kwargs.values()] if isinstance(args, tuple | list) else [args]
        widths += [v for v in values if isinstance(v, int)]
    widest = max(widths, default=0)
    if widest > limit:
        raise refuse(f"a format string asks for a width of {widest:,}; template_max_chars is {limit:,}")


def check_call(budget: Budget, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a call whose result would be too large. Returns the arguments to call with: `join` measures the
    items it is given, so an iterator among them is made a list first (and read once)."""
    # The sandbox hands out `str.format` as a wrapper of the bound method (`__wrapped__`).
    owner = getattr(function, "__self__", None) or getattr(getattr(function, "__wrapped__", None), "__self__", None)
    if isinstance(owner, str):
        return _check_str_method(budget, owner, function.__name__, args, kwargs)
    if getattr(function, "__name__", "") == "generate_lorem_ipsum":
        paragraphs = _argument(args, kwargs, 0, "n", 5)
        words = _argument(args, kwargs, 3, "max", 100)
        if isinstance(paragraphs, int) and isinstance(words, int):
            budget.check_size(paragraphs * words * 12, "lipsum()")
    return args


def _check_str_method(budget: Budget, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]):
    what = f"str.{name}()"
    if name in ("ljust", "rjust", "center", "zfill"):
        width = _argument(args, kwargs, 0, "width", 0)
        if isinstance(width, int):
            budget.check_size(width, what)
    elif name == "expandtabs":
        size = _argument(args, kwargs, 0, "tabsize", 8)
        if isinstance(size, int):
            budget.check_size(len(text) + text.count("\t") * size, what)
    elif name == "replace" and len(args) >= 2:
        _check_replace(budget, text, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1), what)
    elif name == "join" and args:
        items = list(args[0])
        _check_join(budget, items, text, what)
        return (items, *args[1:])
    elif name == "format":
        check_format(budget, text, args, kwargs)
    elif name == "format_map" and args and isinstance(args[0], dict):
        check_format(budget, text, (), args[0])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        budget.check_size(len(text) * longest, what)
    return args


def _check_replace(budget: Budget, text: Any, old: Any, new: Any, count: Any, what: str) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    places = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        places = min(places, count)
    budget.check_size(len(text) + places * (len(new) - len(old)), what)


def _check_join(budget: Budget, items: list[Any], separator: Any, what: str) -> None:
    size = sum(len(item) if isinstance(item, str) else 8 for item in items)
    if isinstance(separator, str):
        size += len(separator) * max(len(items) - 1, 0)
    budget.check_size(size, what)


def check_filter(
    budget: Budget, name: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Refuse a filter whose result would be too large; returns the (args, kwargs) to call it with (`join` gets
    its items as a list, as in `check_call`)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return args, kwargs  # the filter itself will say what is wrong with its arguments
    bound.apply_defaults()
    given = bound.arguments
    what = f"the {name} filter's result"
    if name == "center" and isinstance(given["width"], int):
        budget.check_size(given["width"], what)
    elif name == "indent":
        text, width = str(given["s"]), given["width"]
        per_line = width if isinstance(width, int) else len(str(width))
        budget.check_size(len(text) + (text.count("\n") + 1) * per_line, what)
    elif name == "format" and isinstance(given["value"], str):
        check_format(budget, given["value"], given["args"], given["kwargs"])
    elif name == "replace":
        _check_replace(budget, given["s"], given["old"], given["new"], given["count"], what)
    elif name == "join" and given["attribute"] is None and not isinstance(given["value"], str):
        items = list(given["value"])
        _check_join(budget, items, given["d"], what)
        given["value"] = items
        return bound.args, bound.kwargs
    elif name == "wordwrap" and isinstance(given["s"], str) and isinstance(given["width"], int):
        text, wrap = given["s"], given["wrapstring"] or "\n"
        lines = len(text) // max(given["width"], 1) + text.count("\n") + 1
        budget.check_size(len(text) + lines * len(str(wrap)), what)
    elif name in ("batch", "slice"):
        count = given["linecount" if name == "batch" else "slices"]
        if isinstance(count, int) and count > MAX_ITEMS:
            raise refuse(f"the {name} filter would make {count:,} items; at most {MAX_ITEMS:,}")
    elif name == "tojson":
        indent = given["indent"]
        size = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else 0
        if size > MAX_JSON_INDENT:
            raise refuse(f"tojson(indent={size:,}): at most {MAX_JSON_INDENT}")
    return args, kwargs


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str, default: Any) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _integers(left: Any, right: Any) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in (left, right))


def _sequences(left: Any, right: Any) -> bool:
    return isinstance(left, list | tuple) and isinstance(right, list | tuple)


def _check_length(budget: Budget, kind: Any, size: int, how: str) -> None:
    if isinstance(kind, str):
        budget.check_size(size, f"a string {how}")
    elif size > MAX_ITEMS:
        raise refuse(f"a list {how} would have {size:,} items; at most {MAX_ITEMS:,}")


def _check_bits(bits: int, operator: str) -> None:
    if bits > MAX_INT_BITS:
        raise refuse(f"an integer computed by {operator} would have {bits:,} bits; at most {MAX_INT_BITS:,}")


GUARDED_FILTERS = frozenset({"center", "indent", "format", "replace", "join", "wordwrap", "batch", "slice", "tojson"})
