"""Where the records of a JSON file begin and end: the lines of JSONL, the items of a JSON array. Bounded.

A record is never held whole unless it is at most `max_bytes` long: the bytes come in chunks of at most
`CHUNK`, and past the limit the rest of the record is only scanned for its end, so one endless line (a
decompression bomb, a file with no newline) costs a chunk of memory, not its length. Each piece says the line
it starts on; an array item also says its position in the array, since one line may hold the whole array.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

CHUNK = 1 << 20
FIRST_CHUNK = 16 << 10
BOM = b"\xef\xbb\xbf"

# Scanning is done by regular expressions and bytes methods, which run in C: a Python step per byte would
# take minutes per gigabyte, and bombs are gigabytes of newlines or brackets.
_SPACE_RUN = re.compile(rb"[ \t\r\n\f\v]+")  # blank lines, skipped in one step up to their last newline
_NOT_BLANK = re.compile(rb"[^ \t\r\n\f\v]")  # what makes a line a record (bytes.strip's blanks are these)
_WHITESPACE = re.compile(rb"[ \t\r\n]*")  # what JSON allows between values
_OUTSIDE_STRINGS = re.compile(rb'[^"]*')  # inside an item, up to the next string
_STRUCTURE = re.compile(rb'["\[\]{},]')  # outside strings: what can open, close or separate a value
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)  # inside a string: up to its closing quote


@dataclass(slots=True)
class Piece:
    """One record's bytes, or why it has none: `data` is None when it is longer than the limit (then `size`
    says how long it was) or when the file's structure broke there (`error`, `detail`)."""

    line: int
    data: bytes | None
    size: int
    item: int | None = None
    error: str | None = None
    detail: str = ""


Read = Callable[[int], bytes]


class ReadFailed(Exception):
    """The stream could not give more bytes (a truncated or corrupt archive); the message says why and where."""


def split_records(
    read: Read, max_bytes: int, arrays: bool, first_line: int = 1, strip_bom: bool = True
) -> Iterator[Piece]:
    """The records of a JSON stream: the items of an array when `arrays` and the first character is '[', else
    the lines. A read that fails ends the stream with an `unreadable` piece where it broke. A stream that starts
    at a line inside a file (a work unit, `pipeline/units.py`) says which (`first_line`), and keeps a byte order
    mark there (`strip_bom=False`: only a file's first bytes can be one)."""
    stream = chunks(read, strip_bom)
    line = first_line
    # The blanks after the last newline before the first record: the start of its line (it counts them; and
    # what a chunk boundary falls between must not change a record's bytes).
    lead = _Collector(max_bytes)
    try:
        for chunk in stream:
            first = chunk.lstrip(b" \t\r\n")[:1]
            if first:
                break
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                line += chunk.count(b"\n")
                lead.take(line)
                chunk = chunk[newline + 1 :]
            lead.add(chunk)
        else:
            return  # empty, or only blank lines
    except ReadFailed as exc:
        yield Piece(line, None, 0, error="unreadable", detail=str(exc))
        return
    rest = itertools.chain([chunk], stream)
    if arrays and first == b"[":
        yield from _array_items(rest, max_bytes, line)
    else:
        yield from _lines(rest, lead, line)


def chunks(read: Read, strip_bom: bool = True) -> Iterator[bytes]:
    """The stream in chunks of at most CHUNK bytes, without a leading UTF-8 byte order mark (Windows tools
    write one; it is no part of the JSON). The first chunks are smaller (FIRST_CHUNK, doubling up to CHUNK), so
    that a reader that wants only the first records (a file's format, `inputs.first_format`) reads only about
    as much as they hold."""
    size = FIRST_CHUNK
    first = read(size)
    while strip_bom and first and len(first) < len(BOM) and BOM.startswith(first):
        more = read(size)
        if not more:
            break
        first += more
    if strip_bom and first.startswith(BOM):
        first = first[len(BOM) :]
    if first:
        yield first
    while chunk := read(size := min(2 * size, CHUNK)):
        yield chunk


class _Collector:
    """The bytes of the record being read, kept while they fit the limit and counted after."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        self.blank = True  # nothing but blanks yet: a blank line is no record, however long

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.blank and _NOT_BLANK.search(data):
            self.blank = False
        if self.size <= self.max_bytes:
            self.parts.append(data)
        else:
            self.parts.clear()

    def take(self, line: int, item: int | None = None) -> Piece:
        data = b"".join(self.parts) if self.size <= self.max_bytes else None
        piece = Piece(line, data, self.size, item)
        self.parts, self.size, self.blank = [], 0, True
        return piece


def _lines(stream: Iterator[bytes], record: _Collector, line: int) -> Iterator[Piece]:
    """The non-blank lines (without their newline), each with its 1-based line number; `record` holds the start
    of the first."""
    try:
        for chunk in stream:
            position, end = 0, len(chunk)
            while position < end:
                if not record.size and (space := _SPACE_RUN.match(chunk, position)):
                    last = chunk.rfind(b"\n", position, space.end())
                    if last >= 0:  # blank lines
                        line += chunk.count(b"\n", position, last + 1)
                        position = last + 1
                        continue
                newline = chunk.find(b"\n", position)
                if newline < 0:
                    record.add(chunk[position:])
                    break
                record.add(chunk[position:newline])
                blank = record.blank
                piece = record.take(line)
                if not blank:
                    yield piece
                line += 1
                position = newline + 1
    except ReadFailed as exc:
        yield Piece(line, None, record.size, error="unreadable", detail=str(exc))
        return
    if not record.blank:
        yield record.take(line)


class _ArrayScanner:
    """The items of one top-level JSON array, found by following strings and brackets (not by parsing them:
    each item is parsed on its own, later, like a JSONL line)."""

    def __init__(self, max_bytes: int, line: int):
        self.item = _Collector(max_bytes)
        self.line = line
        self.items = 0
        self.state = "open"  # open -> start (of an item) -> item -> ... -> closed
        self.in_string = False
        # Brackets open inside the current item. Only counted, not matched: a mismatch makes the item invalid
        # JSON, which its parse reports; the next item still starts at the next comma outside any bracket.
        self.depth = 0
        self.item_line = 1
        self.carry = b""  # a backslash that ended the last chunk inside a string, kept with what follows

    def scan(self, chunk: bytes) -> Iterator[Piece]:
        position, end = 0, len(chunk)
        start = 0  # where the current item's bytes in this chunk begin
        while position < end:
            if self.state in ("open", "start", "closed"):
                blank = _WHITESPACE.match(chunk, position)
                self.line += chunk.count(b"\n", position, blank.end())
                position = blank.end()
                if position == end:
                    break
                byte = chunk[position]
                if self.state == "open":
                    if byte != ord("["):
                        yield self.broken("invalid_json", "the file does not start with a JSON array")
                        return
                    self.state = "start"
                    position += 1
                elif self.state == "closed":
                    yield self.broken("invalid_json", "data after the end of the JSON array")
                    return
                elif byte == ord("]"):
                    self.state = "closed"  # an empty array, or a trailing comma (accepted)
                    position += 1
                else:
                    self.state, self.item_line, start = "item", self.line, position
                continue
            if self.in_string:
                found = _string_stop(chunk, position, end)
                self.line += chunk.count(b"\n", position, found)
                position = found
                if position < end and chunk[position] == ord('"'):
                    self.in_string = False
                    position += 1
                elif position < end:  # a backslash ends the chunk: it escapes the first byte of the next
                    self.item.add(chunk[start:position])
                    self.carry = chunk[position:]
                    return
                continue
            run = _OUTSIDE_STRINGS.match(chunk, position).end()
            closers = chunk.count(b"]", position, run) + chunk.count(b"}", position, run)
            if self.depth > closers:  # the item cannot end before the next string: take the run at once
                openers = chunk.count(b"[", position, run) + chunk.count(b"{", position, run)
                self.depth += openers - closers
                self.line += chunk.count(b"\n", position, run)
                position = run
                if position < end:
                    self.in_string = True
                    position += 1
                continue
            found = _STRUCTURE.search(chunk, position)
            stop = found.start() if found else end
            self.line += chunk.count(b"\n", position, stop)
            position = stop
            if found is None:
                break
            byte = chunk[position]
            if byte == ord('"'):
                self.in_string = True
            elif byte in (ord("["), ord("{")):
                self.depth += 1
            elif byte in (ord("]"), ord("}")) and self.depth:
                self.depth -= 1
            elif byte == ord(",") and not self.depth:
                self.item.add(chunk[start:position])
                yield self.item.take(self.item_line, self.items)
                self.items += 1
                self.state = "start"
            elif byte == ord("]"):  # closes the array itself
                self.item.add(chunk[start:position])
                yield self.item.take(self.item_line, self.items)
                self.items += 1
                self.state = "closed"
            position += 1
        if self.state == "item":
            self.item.add(chunk[start:])

    def finish(self) -> Iterator[Piece]:
        if self.state == "item":
            self.item.add(self.carry)
            yield self.broken("invalid_json", "the JSON array ends inside this item (cut off, or never closed)")
        elif self.state == "start":
            yield self.broken("invalid_json", "the JSON array is not closed")

    def broken(self, error: str, detail: str) -> Piece:
        """The piece that says where the file broke; the current item's bytes, if any, are dropped."""
        piece = self.item.take(self.item_line if self.state == "item" else self.line, self.items)
        self.state = "broken"
        return Piece(piece.line, None, piece.size, piece.item, error=error, detail=detail)


def _string_stop(chunk: bytes, position: int, end: int) -> int:
    """Inside a string from `position`: the index of its closing quote, `end` when the chunk ends first, or that
    of a backslash that is the chunk's last byte. A string without escapes (a bomb's gigabyte of one letter) is
    crossed by `find`, at memory speed; from its first backslash on, by the regular expression."""
    quote = chunk.find(b'"', position)
    stop = end if quote < 0 else quote
    backslash = chunk.find(b"\\", position, stop)
    if backslash < 0:
        return stop
    return _STRING_BODY.match(chunk, backslash).end()


def _array_items(stream: Iterator[bytes], max_bytes: int, line: int) -> Iterator[Piece]:
    """The items of one JSON array, each with the line it starts on and its position."""
    scanner = _ArrayScanner(max_bytes, line)
    try:
        for chunk in stream:
            if scanner.carry:
                chunk, scanner.carry = scanner.carry + chunk, b""
            for piece in scanner.scan(chunk):
                yield piece
                if piece.error is not None:
                    return
    except ReadFailed as exc:
        yield scanner.broken("unreadable", str(exc))
        return
    yield from scanner.finish()
