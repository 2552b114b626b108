"""Decoding text files as they come: UTF-8 (with or without a byte-order mark), UTF-8 with a
few stray bytes, or a whole file in a legacy encoding (Latin-1, Windows-1252, ...).

`decode(raw, path, encoding)`:
* `encoding` given: decoded with it (an error names the file and the byte offset);
* valid UTF-8: as is;
* UTF-8 with invalid bytes among valid multi-byte characters: the bad bytes become U+FFFD and
  are counted (a file edited in two encodings);
* no valid multi-byte UTF-8 at all: the encoding `charset-normalizer` detects (a legacy
  single-byte file such as ISO-8859-1 text with non-breaking spaces); Windows-1252 (a
  superset of Latin-1's printable characters) when it is among the code pages that read the
  bytes plausibly (a Cyrillic or Greek code page's bytes read as Windows-1252 are not).
The bytes outside ASCII are counted in the note either way.
A file with NUL bytes or other control characters is binary and refused by name.
"""
from __future__ import annotations

import codecs
import dataclasses
import re

import charset_normalizer

# Control characters other than tab, newline, vertical tab, form feed and carriage return.
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")


_PREFERRED = ("cp1252", "latin_1")
_NON_ASCII = re.compile(rb"[\x80-\xff]")


@dataclasses.dataclass
class Decoded:
    text: str
    encoding: str
    note: str | None  # how it was decoded, when not plain UTF-8


def _utf8_errors(raw: bytes) -> tuple[int, int, int]:
    """(invalid byte sequences, valid multi-byte characters, byte offset of the first error)."""
    bad, first, pos = 0, -1, 0
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    good_multi = 0
    while pos < len(raw):
        try:
            text = decoder.decode(raw[pos:], final=True)
            good_multi += sum(1 for ch in text if ord(ch) > 0x7F)
            break
        except UnicodeDecodeError as e:
            good_multi += sum(1 for ch in raw[pos:pos + e.start].decode("utf-8") if ord(ch) > 0x7F)
            bad += 1
            first = pos + e.start if first < 0 else first
            pos += e.end
            decoder.reset()
    return bad, good_multi, first


def decode(raw: bytes, path: str, encoding: str = "") -> Decoded:
    """The text of a file's bytes (see the module docstring)."""
    binary = _BINARY.search(raw[:1 << 20])
    if binary:
        raise ValueError(f"{path}: not a text file (control byte {binary.group()!r} at offset "
                         f"{binary.start()})")
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}") from None
        try:
            return Decoded(raw.decode(encoding), encoding,
                           None if encoding.replace("-", "").lower() in ("utf8", "utf8sig")
                           else f"decoded as {encoding}")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not {encoding} text (byte offset {e.start})") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return Decoded(raw.decode("utf-8"), "utf-8", None)
    except UnicodeDecodeError:
        pass
    bad, good_multi, first = _utf8_errors(raw)
    if good_multi:
        line = raw[:first].count(b"\n") + 1
        return Decoded(raw.decode("utf-8", errors="replace"), "utf-8",
                       f"{bad} byte sequence{'s' if bad > 1 else ''} not UTF-8 (first on line "
                       f"{line}), replaced by U+FFFD")
    # every match reads the bytes under charset-normalizer's mess threshold, best first;
    # Western text is the common case among them
    plausible = [m.encoding for m in charset_normalizer.from_bytes(raw)]
    name = next((e for e in _PREFERRED if e in plausible), plausible[0] if plausible else "cp1252")
    try:
        text = raw.decode(name)
    except (UnicodeDecodeError, LookupError):
        name, text = "latin_1", raw.decode("latin-1")
    high = len(_NON_ASCII.findall(raw))
    line = raw[:_NON_ASCII.search(raw).start()].count(b"\n") + 1
    return Decoded(text, name, f"not UTF-8 ({high} byte{'s' if high > 1 else ''} outside ASCII, "
                               f"first on line {line}): decoded as {name} (detected)")
