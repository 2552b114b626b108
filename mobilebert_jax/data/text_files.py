"""Decoding text files as they come: UTF-8 (with or without a byte-order mark), UTF-8 with a
few stray bytes, or a whole file in a legacy encoding (Latin-1, Windows-1252, ...). The one
home of text decoding: fine-tuning files (`labelled_files`) decode a whole file with `decode`;
pretraining corpora (`corpus`) choose a file's encoding once from its first MB
(`choose_encoding`) and decode it line by line with `decode_line`, which gives the same text.

A file's encoding:
* declared (`encoding`, e.g. `latin-1`): decoded with it (an error names the file and the
  byte offset of a byte it cannot decode);
* valid UTF-8: as is;
* UTF-8 with bytes that are not UTF-8 among valid multi-byte characters (a file edited in two
  encodings): UTF-8, the stray bytes decoded as Windows-1252 and counted;
* no valid multi-byte UTF-8 at all: the encoding `charset-normalizer` detects (a legacy
  single-byte file such as ISO-8859-1 text with non-breaking spaces); Windows-1252 (a
  superset of Latin-1's printable characters) when it is among the code pages that read the
  bytes plausibly (a Cyrillic or Greek code page's bytes read as Windows-1252 are not); see
  `_detect` for the choice among the others.
A file is binary, and refused by name, when its first MB holds a NUL byte, or control
characters (other than tab, newline, carriage return and form feed) on more than
`MAX_CONTROL_LINE_FRACTION` of its lines; a stray control character (a DOS end-of-file mark)
is text.
"""
from __future__ import annotations

import codecs
import dataclasses
import re
import sys

import charset_normalizer

from mobilebert_jax import files

SAMPLE_BYTES = 1 << 20  # what a file's encoding and binary-ness are judged on
MAX_CONTROL_LINE_FRACTION = 0.1
UTF8 = "utf-8"
STRAY_ENCODING = "cp1252"  # what stray bytes in a UTF-8 file are decoded as

# Control characters other than tab, newline, carriage return and form feed (NUL apart).
_CONTROL = re.compile(rb"[\x01-\x08\x0b\x0e-\x1f]")
_PREFERRED = ("cp1252", "latin_1")
_NON_ASCII = re.compile(rb"[\x80-\xff]")


@dataclasses.dataclass
class Decoded:
    text: str
    encoding: str
    note: str | None  # how it was decoded, when not plain UTF-8


def _stray_char(byte: int) -> str:
    """A byte that is not UTF-8, as Windows-1252 reads it (Latin-1 for the five bytes
    Windows-1252 leaves undefined)."""
    try:
        return bytes([byte]).decode(STRAY_ENCODING)
    except UnicodeDecodeError:
        return chr(byte)


def _stray_bytes_handler(error: UnicodeDecodeError) -> tuple[str, int]:
    bad = error.object[error.start:error.end]
    return "".join(_stray_char(b) for b in bad), error.end


codecs.register_error("mobilebert_jax.stray_bytes", _stray_bytes_handler)


def _multi_byte(text: str) -> int:
    """The characters of `text` outside ASCII (multi-byte in UTF-8)."""
    return len(text) - len(text.encode("ascii", errors="ignore"))


def _utf8_with_stray_bytes(raw: bytes, count: bool = False) -> tuple[str, int, int, int]:
    """(text, stray bytes, valid multi-byte characters when `count` else 0, offset of the first
    stray byte or -1): `raw` as UTF-8, the bytes that are not UTF-8 decoded as Windows-1252."""
    try:
        text = raw.decode(UTF8)
        return text, 0, _multi_byte(text) if count else 0, -1
    except UnicodeDecodeError:
        pass
    view, parts, pos, stray, first = memoryview(raw), [], 0, 0, -1
    while pos < len(raw):
        try:
            parts.append(codecs.utf_8_decode(view[pos:], "strict", True)[0])
            break
        except UnicodeDecodeError as e:
            parts.append(codecs.utf_8_decode(view[pos:pos + e.start], "strict", True)[0])
            parts.append("".join(_stray_char(b) for b in raw[pos + e.start:pos + e.end]))
            stray += e.end - e.start
            first = pos + e.start if first < 0 else first
            pos += e.end
    multi = sum(_multi_byte(p) for p in parts[::2]) if count else 0
    return "".join(parts), stray, multi, first


def check_encoding(name: str) -> str:
    """`name` if Python knows it and it keeps newlines and ASCII as single bytes (lines are
    split at newline bytes); ValueError otherwise."""
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"unknown encoding {name!r}") from None
    if "\nA".encode(name, errors="replace") != b"\nA":
        raise ValueError(f"encoding {name!r} is not ASCII-compatible (only such encodings are "
                         "read line by line; convert the file to UTF-8)")
    return name


def _is_utf8(name: str) -> bool:
    return codecs.lookup(name).name == UTF8


def binary_reason(sample: bytes) -> str | None:
    """Why `sample` (a file's first bytes) is binary, or None for text (module docstring)."""
    nul = sample.find(b"\0")
    if nul >= 0:
        return f"NUL byte at offset {nul}"
    lines = sample.split(b"\n")
    with_control = [line for line in lines if _CONTROL.search(line)]
    if with_control and len(with_control) > MAX_CONTROL_LINE_FRACTION * len(lines):
        first = _CONTROL.search(sample)
        return (f"control characters on {len(with_control)} of its first {len(lines)} lines, "
                f"the first {first.group()!r} at offset {first.start()}")
    return None


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _detect(sample: bytes) -> str:
    """The legacy encoding of bytes that are not UTF-8. Every match `charset-normalizer`
    returns reads them under its mess threshold, best first. Western text is the common case:
    Windows-1252 (then Latin-1) when among them, or among the code pages that read the bytes
    into the same text as one of them; otherwise, of the matches as little messy as
    the best, the one that reads the sample as the fewest characters (a multi-byte encoding
    that reads the bytes as pairs explains them better than single-byte code pages that all
    read them, each differently), in charset-normalizer's order."""
    matches = [m for m in charset_normalizer.from_bytes(sample)
               if _ascii_compatible(m.encoding)]
    # a match stands for every code page that reads the bytes into the same text
    names = {name for m in matches for name in m.could_be_from_charset}
    preferred = next((e for e in _PREFERRED if e in names), None)
    if preferred or not matches:
        return preferred or STRAY_ENCODING
    best = min(m.chaos for m in matches)
    tied = [m.encoding for m in matches if m.chaos <= best]
    return min(tied, key=lambda e: len(sample.decode(e, errors="mobilebert_jax.stray_bytes")))


def _ascii_compatible(name: str) -> bool:
    try:
        check_encoding(name)
        return True
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Choice:
    encoding: str  # UTF8: UTF-8 with stray bytes decoded as Windows-1252
    declared: bool
    note: str | None  # how the sample decodes, when not plain UTF-8


def choose_encoding(sample: bytes, path: str, declared: str = "") -> Choice:
    """A file's encoding from its first bytes (module docstring); ValueError naming the file
    when they are binary. A sample cut at SAMPLE_BYTES should end at a line end."""
    reason = binary_reason(sample)
    if reason:
        raise ValueError(f"{path}: not a text file ({reason})")
    if declared:
        check_encoding(declared)
        if _is_utf8(declared):
            return Choice(UTF8, True, None)
        return Choice(declared, True, f"decoded as {declared} (declared)")
    if sample.startswith(codecs.BOM_UTF8):
        sample = sample[len(codecs.BOM_UTF8):]
    _, stray, multi, first = _utf8_with_stray_bytes(sample, count=True)
    if not stray:
        return Choice(UTF8, False, None)
    if multi:
        return Choice(UTF8, False, f"{_plural(stray, 'byte')} not UTF-8 (first on line "
                                   f"{_line_of(sample, first)}): decoded as {STRAY_ENCODING}")
    name = _detect(sample)
    high = len(_NON_ASCII.findall(sample))
    line = _line_of(sample, _NON_ASCII.search(sample).start())
    return Choice(name, False, f"not UTF-8 ({_plural(high, 'byte')} outside ASCII, first on "
                               f"line {line}): decoded as {name} (detected)")


def decode_line(raw: bytes, choice: Choice, path: str = "", offset: int = 0) -> tuple[str, int]:
    """(text, stray bytes decoded as Windows-1252) of some whole lines of a file whose
    encoding is `choice`; a declared encoding that cannot decode them raises ValueError naming
    `path` and the byte offset (`offset`: where `raw` starts in the file)."""
    if choice.encoding == UTF8:
        if offset == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        text, stray, _, _ = _utf8_with_stray_bytes(raw)
        return text, stray
    if choice.declared:
        try:
            return raw.decode(choice.encoding), 0
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not {choice.encoding} text (byte offset "
                             f"{offset + e.start})") from None
    return raw.decode(choice.encoding, errors="mobilebert_jax.stray_bytes"), 0


def decode(raw: bytes, path: str, encoding: str = "") -> Decoded:
    """The text of a whole file's bytes (see the module docstring)."""
    sample = raw[:SAMPLE_BYTES]
    if len(raw) > SAMPLE_BYTES and b"\n" in sample:
        sample = sample[:sample.rindex(b"\n") + 1]
    choice = choose_encoding(sample, path, encoding)
    text, stray = decode_line(raw, choice, path)
    note = choice.note
    if choice.encoding == UTF8 and stray:
        first = _utf8_with_stray_bytes(raw)[3]
        note = (f"{_plural(stray, 'byte')} not UTF-8 (first on line {_line_of(raw, first)}): "
                f"decoded as {STRAY_ENCODING}")
    elif not choice.declared and choice.encoding != UTF8:
        high = len(_NON_ASCII.findall(raw))
        line = _line_of(raw, _NON_ASCII.search(raw).start())
        note = (f"not UTF-8 ({_plural(high, 'byte')} outside ASCII, first on line {line}): "
                f"decoded as {choice.encoding} (detected)")
    return Decoded(text, choice.encoding, note)


def file_encoding(path: str, declared: str = "") -> tuple[Choice, int]:
    """A text file's encoding, chosen from its first `SAMPLE_BYTES` (up to their
    last line end), and how many bytes that sample holds; ValueError naming a binary file."""
    with files.open_binary(path) as f:
        sample = f.read(SAMPLE_BYTES)
    if len(sample) == SAMPLE_BYTES and b"\n" in sample:
        sample = sample[:sample.rindex(b"\n") + 1]
    return choose_encoding(sample, path, declared), len(sample)


def report_encodings(choices: list[tuple[str, Choice]]) -> None:
    """One line on stderr per file that is not plain UTF-8, then their count."""
    odd = [(path, c) for path, c in choices if c.note]
    for path, c in odd:
        kind = "note" if c.encoding != UTF8 else "warning"
        print(f"{kind}: {path}: {c.note}", file=sys.stderr, flush=True)
    if odd:
        detected = sum(1 for _, c in odd if c.encoding != UTF8 and not c.declared)
        stray = sum(1 for _, c in odd if c.encoding == UTF8)
        print(f"note: {len(odd)} of {len(choices)} corpus files are not plain UTF-8: "
              f"{detected} in a detected encoding, {len(odd) - detected - stray} in a declared "
              f"one, {stray} UTF-8 with stray bytes", file=sys.stderr, flush=True)
