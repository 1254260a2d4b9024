from __future__ import annotations

import bz2
import itertools
import json
from pathlib import Path

import pytest

from asymmetry.defaults import package_dir
from asymmetry.errors import AsymmetryError
from asymmetry.index.corpus import READERS, open_corpus, register_reader, wikitext_to_text


def gensim_dump() -> Path:
    found = sorted((package_dir("gensim") / "test" / "test_data").glob("enwiki-*-shortened*.bz2"))
    if not found:
        pytest.fail("gensim's shortened enwiki dump is missing: pip install --no-deps gensim==4.4.0")
    return found[0]


PAGE = """<page><title>{title}</title><ns>{ns}</ns><id>{id}</id>{extra}
<revision><id>1</id><text xml:space="preserve">{text}</text></revision></page>"""


def write_dump(path: Path, pages: list[dict]) -> Path:
    body = "".join(PAGE.format(**{"extra": "", "ns": 0, **p}) for p in pages)
    xml = f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">{body}</mediawiki>'
    if path.name.endswith(".bz2"):
        path.write_bytes(bz2.compress(xml.encode()))
    else:
        path.write_text(xml, encoding="utf-8")
    return path


ARTICLE = ("'''Photosynthesis''' is the process by which [[plant]]s use [[sunlight|light]] to make sugar."
           "&lt;ref&gt;A source&lt;/ref&gt; {{cite web|url=x}} It releases [[oxygen]] as a by-product of splitting "
           "water molecules in the chloroplasts of green cells.\n== History ==\n[[File:Leaf.jpg|thumb|A leaf]]"
           "Early experiments by Jan Ingenhousz showed the role of light.\n[[Category:Biology]]")


@pytest.mark.parametrize("name", ["dump.xml", "dump.xml.bz2"])
def test_mediawiki_keeps_articles_only(tmp_path, name):
    path = write_dump(tmp_path / name, [
        {"title": "Photosynthesis", "id": 1, "text": ARTICLE},
        {"title": "Photosynth", "id": 2, "extra": '<redirect title="Photosynthesis" />',
         "text": "#REDIRECT [[Photosynthesis]] and more words to pass the minimum length of ten words"},
        {"title": "Mercury", "id": 3, "text": "'''Mercury''' may refer to: the planet, the element, the god, the car "
                                              "brand and many other things.\n{{disambiguation}}"},
        {"title": "Talk:Photosynthesis", "ns": 1, "id": 4, "text": "A talk page with plenty of words about the "
                                                                   "article and its sources and edits."},
    ])
    arts = list(open_corpus(path))
    assert [a.title for a in arts] == ["Photosynthesis"]
    text = arts[0].text
    assert text.startswith("Photosynthesis is the process by which plants use light to make sugar.")
    assert "Jan Ingenhousz" in text and "oxygen" in text
    for markup in ("[[", "{{", "'''", "<ref", "A source", "History", "Category", "thumb"):
        assert markup not in text
    assert arts[0].url == "https://en.wikipedia.org/wiki/Photosynthesis"
    assert arts[0].metadata["page_id"] == "1"


def test_mediawiki_reader_on_real_shortened_dump():
    arts = list(itertools.islice(open_corpus(gensim_dump()), 4))
    assert [a.title for a in arts] == ["Anarchism", "Autism", "Albedo", "A"]
    assert arts[0].text.startswith("Anarchism is a political philosophy")
    for a in arts:
        assert len(a.text.split()) > 50
        assert "{{" not in a.text and "[[" not in a.text and "<ref" not in a.text


def test_truncated_bz2_names_file_and_fix(tmp_path):
    broken = tmp_path / "enwiki-truncated.xml.bz2"
    broken.write_bytes(gensim_dump().read_bytes()[:40_000])
    with pytest.raises(AsymmetryError, match=r"enwiki-truncated\.xml\.bz2 is truncated or corrupt.*download the dump"):
        list(open_corpus(broken))


def test_corrupt_bz2_names_file(tmp_path):
    data = bytearray(bz2.compress(b"<mediawiki>" + b"<page><title>x</title></page>" * 2000 + b"</mediawiki>"))
    data[60:90] = b"\x00" * 30
    corrupt = tmp_path / "corrupt.xml.bz2"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(AsymmetryError, match=r"corrupt\.xml\.bz2 is truncated or corrupt"):
        list(open_corpus(corrupt))


def test_jsonl_line_without_text_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"title": "A", "text": "Alpha text."}) + "\n" + json.dumps({"title": "B"}) + "\n")
    with pytest.raises(AsymmetryError, match=r"c\.jsonl line 2 has no 'text' field"):
        list(open_corpus(path))


def test_jsonl_bad_json_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "A", "text": "x"}\n{not json\n')
    with pytest.raises(AsymmetryError, match=r"line 2 is not valid JSON"):
        list(open_corpus(path))


def test_parquet_reader_and_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"title": ["A", "B"], "text": ["Alpha is first.", "Beta is second."],
                             "url": ["u1", "u2"]}), good)
    arts = list(open_corpus(good))
    assert [(a.title, a.text, a.url) for a in arts] == [("A", "Alpha is first.", "u1"), ("B", "Beta is second.", "u2")]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"title": ["A"], "body": ["x"]}), bad)
    with pytest.raises(AsymmetryError, match=r"bad\.parquet has no column 'text'"):
        list(open_corpus(bad))


def test_default_corpus_keeps_topic():
    arts = list(open_corpus("default"))
    assert len(arts) == 10_033
    topics = {a.metadata["topic"] for a in arts}
    assert {"Physical sciences", "People", "History"} <= topics
    assert all(a.url.startswith("https://en.wikipedia.org/wiki/") for a in arts[:50])


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "c.csv").write_text("title,text\n")
    with pytest.raises(AsymmetryError, match="unknown file type"):
        open_corpus(tmp_path / "c.csv")
    with pytest.raises(AsymmetryError, match="does not exist"):
        open_corpus(tmp_path / "nope.jsonl")


def test_registry_rejects_duplicates():
    assert {"default", "jsonl", "parquet", "mediawiki"} <= set(READERS)
    with pytest.raises(ValueError, match="already registered"):
        register_reader("jsonl", (".jl",), "dup")
    with pytest.raises(ValueError, match="already handled"):
        register_reader("other", (".parquet",), "dup suffix")
    with pytest.raises(ValueError, match="lower-case"):
        register_reader("Bad Name", (".x",), "bad")


def test_wikitext_to_text_drops_markup():
    assert wikitext_to_text("'''Bold''' [[Link|shown]] {{tmpl|x}} text.") == "Bold shown text."
