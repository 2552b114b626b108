"""How text becomes sentences: the pretraining corpora's sentence splitter and the clean-up of
Wikipedia markup.

Lines and paragraphs are split into sentences by `split_sentences`, a small regex splitter:
a sentence ends at `.`, `!` or `?` (plus closing quotes/brackets) followed by whitespace and an
upper-case letter, digit or opening quote, unless the word before the stop is a known
abbreviation (Mr., Dr., e.g., ...) or a single capital initial (J. R. R. Tolkien).
"""
from __future__ import annotations

import re

MIN_WIKI_LINE_WORDS = 3

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig figs no nos vol vols ed eds "
    "approx ca c inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec gen col "
    "lt sgt capt rev gov sen rep u.s u.k a.d b.c p pp ph.d op".split())
# A candidate boundary: terminal punctuation, optional closers, whitespace, then a likely
# sentence start.
_BOUNDARY = re.compile(r"""([.!?]+)(["'\u201d\u2019)\]]*)(\s+)(?=["'\u201c\u2018(\[]?[A-Z0-9])""")
_WORD_BEFORE = re.compile(r"(\S+)$")
WIKI_TITLE = re.compile(r"^\s*=\s+(.*?)\s+=\s*$")
_WIKI_HEADING = re.compile(r"^\s*=+.*=+\s*$")
_WIKI_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_WIKI_QUOTES = re.compile(r"'{2,}")


def split_sentences(text: str) -> list[str]:
    """Splits a paragraph into sentences with the regex rules in the module docstring."""
    text = " ".join(text.split())
    if not text:
        return []
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if m.group(1) == ".":
            word = _WORD_BEFORE.search(text, start, m.start())
            prev = word.group(1).lstrip("\"'(\u201c\u2018[") if word else ""
            if prev.lower() in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", prev):
                continue
        end = m.start(3)
        sentences.append(text[start:end])
        start = m.end()
    sentences.append(text[start:])
    return [s for s in sentences if s]


def paragraphs_to_document(paragraphs: list[str]) -> list[str]:
    """The sentences of a document's paragraphs, in order."""
    return [s for p in paragraphs for s in split_sentences(p)]


def clean_wiki_markup(text: str) -> list[str]:
    """Paragraphs of a `filter_wiki` output: headings, list markers, leftover ''/''' quotes
    and lines under MIN_WIKI_LINE_WORDS words removed."""
    paragraphs = []
    for line in text.splitlines():
        if _WIKI_HEADING.match(line):
            continue
        line = _WIKI_QUOTES.sub("", _WIKI_LIST_MARKER.sub("", line.strip()))
        line = " ".join(line.split())
        if len(line.split()) >= MIN_WIKI_LINE_WORDS:
            paragraphs.append(line)
    return paragraphs
