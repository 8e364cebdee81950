"""Readers and cleaners on small fixtures written in the real source formats."""

import bz2
import gzip
import io
import json
import os
import tarfile
import zipfile
from xml.sax.saxutils import escape, quoteattr

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pajama.config import resolve_path
from pajama.data import cleaning
from pajama.data.readers import FORMATS, read_source
from pajama.data.readers.common import QUARANTINED_TEXT_CHARS
from pajama.data.readers.github import detect_licence
from pajama.data.slices import DOCUMENT_COLUMNS, READ_ERROR

MIT_TEXT = """MIT License

Copyright (c) 2023 Demo Authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction."""
GPL3_TEXT = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007
 Everyone is permitted to copy and distribute verbatim copies"""
# 2023-01-01T00:00:00Z, the modification time given to arXiv sources.
EPOCH_2023 = 1672531200




def read_all(dataset) -> tuple[dict[str, dict], dict[str, dict]]:
    """(documents, bad-input rows), each by doc_id with meta parsed; checks every row has exactly
    the document columns and read_error, and that doc_ids are unique."""
    rows = dataset.take_all()
    assert all(tuple(row) == (*DOCUMENT_COLUMNS, READ_ERROR) for row in rows)
    by_id = {row["doc_id"]: {**row, "meta": json.loads(row["meta"])} for row in rows}
    assert len(by_id) == len(rows), "doc_ids are not unique"
    docs = {doc_id: {c: row[c] for c in DOCUMENT_COLUMNS} for doc_id, row in by_id.items() if row[READ_ERROR] is None}
    bad = {doc_id: row for doc_id, row in by_id.items() if row[READ_ERROR] is not None}
    return docs, bad


def documents(dataset) -> dict[str, dict]:
    """The documents by doc_id, meta parsed; checks that no row is bad input."""
    docs, bad = read_all(dataset)
    assert not bad, bad
    return docs


# --- jsonl, parquet, Hugging Face -----------------------------------------------------------


def test_jsonl_reads_redpajama_records_from_compressed_files(ray_session, tmp_path):
    records = [
        {"text": "A theorem.", "meta": {"redpajama_set_name": "RedPajamaArXiv", "arxiv_id": "2301.1"}},
        {"text": "A page.", "meta": json.dumps({"redpajama_set_name": "RedPajamaCommonCrawl"}), "source": "cc"},
    ]
    lines = "\n".join(json.dumps(record) for record in records) + "\n\n"
    with gzip.open(tmp_path / "part-0.jsonl.gz", "wt") as f:
        f.write(lines)
    with pa.CompressedOutputStream(str(tmp_path / "part-1.jsonl.zst"), "zstd") as f:
        f.write(json.dumps({"text": "Chapter one.", "meta": {"redpajama_set_name": "RedPajamaBook"}}).encode())

    docs = documents(read_source("jsonl", str(tmp_path)))

    gz, zst = tmp_path / "part-0.jsonl.gz", tmp_path / "part-1.jsonl.zst"
    assert docs == {
        f"{gz}#1": {
            "doc_id": f"{gz}#1",
            "slice": "arxiv",
            "text": "A theorem.",
            "meta": {"redpajama_set_name": "RedPajamaArXiv", "arxiv_id": "2301.1"},
        },
        f"{gz}#2": {
            "doc_id": f"{gz}#2",
            "slice": "common_crawl",
            "text": "A page.",
            "meta": {"redpajama_set_name": "RedPajamaCommonCrawl", "source": "cc"},
        },
        f"{zst}#1": {
            "doc_id": f"{zst}#1",
            "slice": "books",
            "text": "Chapter one.",
            "meta": {"redpajama_set_name": "RedPajamaBook"},
        },
    }


def test_jsonl_slice_argument_overrides_and_bad_lines_are_rows_naming_file_and_line(ray_session, tmp_path):
    good = tmp_path / "books.jsonl"
    good.write_text(json.dumps({"text": "Once upon a time.", "meta": {"title": "Tale"}}) + "\n")
    assert [(d["slice"], d["text"]) for d in documents(read_source("jsonl", str(good), "books")).values()] == [
        ("books", "Once upon a time.")
    ]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"text": "fine", "meta": {"redpajama_set_name": "RedPajamaC4"}})
        + '\n{"text": "cut off\n'
        + json.dumps({"meta": {"redpajama_set_name": "RedPajamaC4"}})
        + "\n"
        + json.dumps({"text": "no set", "meta": {}})
        + "\n"
    )
    docs, rejected = read_all(read_source("jsonl", str(bad)))
    assert list(docs) == [f"{bad}#1"]
    # A record's slice is kept when its meta names one; a line that is not JSON says nothing.
    assert {doc_id: (row["slice"], row["text"]) for doc_id, row in rejected.items()} == {
        f"{bad}#2": (None, '{"text": "cut off\n'),
        f"{bad}#3": ("c4", ""),
        f"{bad}#4": (None, "no set"),
    }
    assert rejected[f"{bad}#2"][READ_ERROR].startswith(f"{bad}: line 2: not JSON")
    assert rejected[f"{bad}#3"][READ_ERROR] == f"{bad}: line 3: no string 'text' field (set text_column= if the text is elsewhere)"
    assert rejected[f"{bad}#4"][READ_ERROR] == (
        f"{bad}: line 4: meta.redpajama_set_name is None, not a RedPajama set; pass slice_name")

    with pytest.raises(Exception) as raised:
        read_source("jsonl", str(bad), on_bad_input="fail").take_all()
    message = str(raised.value)
    assert f"{bad}: 3 record(s) could not be read" in message
    assert "line 2: not JSON" in message
    assert "line 3: no string 'text' field" in message
    assert "line 4: meta.redpajama_set_name is None, not a RedPajama set; pass slice_name" in message


def test_jsonl_broken_bytes_empty_text_oversize_and_truncated_gzip_are_bad_input_rows(ray_session, tmp_path):
    def line(text, **fields):
        return json.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaBook"}, **fields}).encode() + b"\n"

    plain = tmp_path / "books.jsonl"
    plain.write_bytes(line("Fine.") + line("Caf\u00e9 ").replace("\\u00e9".encode(), b"\xe9") + line("  ")
                      + line("x" * 40) + line("\u00e9" * 20))
    records = b"".join(line(f"Book {i}.") for i in range(2000))
    compressed = gzip.compress(records)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(compressed[: len(compressed) // 2])

    docs, rejected = read_all(read_source("jsonl", [str(plain), str(truncated)], max_document_bytes=39))

    assert {d["text"] for d in docs.values() if d["doc_id"].startswith(str(plain))} == {"Fine."}
    assert {doc_id: (row["slice"], row["text"]) for doc_id, row in rejected.items()
            if doc_id.startswith(str(plain))} == {
        f"{plain}#2": ("books", "Caf\ufffd "),  # the record parsed with a replacement character
        f"{plain}#3": ("books", "  "),
        f"{plain}#4": ("books", "x" * 40),
        f"{plain}#5": ("books", "\u00e9" * 20),  # 20 characters, 40 bytes
    }
    assert rejected[f"{plain}#2"][READ_ERROR].startswith(f"{plain}: line 2: not valid UTF-8")
    assert rejected[f"{plain}#3"][READ_ERROR] == f"{plain}: line 3: 'text' is empty or whitespace only"
    assert rejected[f"{plain}#4"][READ_ERROR] == (
        f"{plain}: line 4: text of 40 bytes is over max_document_bytes (39); "
        f"only its first {QUARANTINED_TEXT_CHARS} characters are kept")
    assert rejected[f"{plain}#5"][READ_ERROR].startswith(f"{plain}: line 5: text of 40 bytes")
    # The truncated file: every line before the break is read, then one row says where it broke.
    read = sorted(int(doc_id.rpartition("#")[2]) for doc_id in docs if doc_id.startswith(str(truncated)))
    assert read == list(range(1, len(read) + 1)) and 0 < len(read) < 2000
    broken = rejected[f"{truncated}#{len(read) + 1}"]
    assert broken["slice"] is None and broken[READ_ERROR].startswith(
        f"{truncated}: line {len(read) + 1}: the file breaks off after line {len(read)} (")
    assert len(rejected) == 5

    with pytest.raises(Exception, match=f"{truncated}: 1 record"):
        read_source("jsonl", str(truncated), on_bad_input="fail").take_all()
    with pytest.raises(ValueError, match="on_bad_input must be 'quarantine' or 'fail', not 'skip'"):
        read_source("jsonl", str(plain), on_bad_input="skip")


def test_unknown_format_and_slice_are_refused():
    with pytest.raises(ValueError, match="unknown source format 'csv'"):
        read_source("csv", "x.csv")
    with pytest.raises(ValueError, match="unknown slice 'news'"):
        read_source("jsonl", "x.jsonl", "news")
    assert set(FORMATS) == {
        "jsonl", "parquet", "hf_disk", "hf_hub", "warc", "wet", "mediawiki", "github", "arxiv", "stackexchange", "text",
        "redpajama_1t", "redpajama_v2",
    }


def test_parquet_rows_with_struct_meta(ray_session, tmp_path):
    table = pa.table(
        {
            "text": ["First.", "Second."],
            "meta": [{"redpajama_set_name": "RedPajamaWikipedia", "title": "A"},
                     {"redpajama_set_name": "RedPajamaWikipedia", "title": "B"}],
            "lang": ["en", "de"],
        }
    )
    path = tmp_path / "wiki.parquet"
    pq.write_table(table, path)

    docs = documents(read_source("parquet", str(path)))

    assert docs == {
        f"{path}#0": {"doc_id": f"{path}#0", "slice": "wikipedia", "text": "First.",
                      "meta": {"redpajama_set_name": "RedPajamaWikipedia", "title": "A", "lang": "en"}},
        f"{path}#1": {"doc_id": f"{path}#1", "slice": "wikipedia", "text": "Second.",
                      "meta": {"redpajama_set_name": "RedPajamaWikipedia", "title": "B", "lang": "de"}},
    }


def test_hf_disk_dataset_dict_with_text_column(ray_session, tmp_path):
    train = datasets.Dataset.from_dict({"content": ["Alpha.", "Beta."], "url": ["u1", "u2"]})
    datasets.DatasetDict({"train": train, "test": train.select([0])}).save_to_disk(str(tmp_path / "ds"))

    docs = documents(read_source("hf_disk", str(tmp_path / "ds"), "c4", text_column="content"))

    assert sorted((d["slice"], d["text"], d["meta"]["url"]) for d in docs.values()) == [
        ("c4", "Alpha.", "u1"), ("c4", "Beta.", "u2")
    ]
    assert all(doc_id.startswith(str(tmp_path / "ds" / "train")) for doc_id in docs)
    with pytest.raises(ValueError, match="no split 'validation'; it has train, test"):
        read_source("hf_disk", str(tmp_path / "ds"), "c4", split="validation")


def test_hf_hub_reads_the_dataset_files_through_the_hub_filesystem(ray_session, tmp_path):
    # A local folder laid out like HfFileSystem ("datasets/<name>/...") stands in for the Hub.
    (tmp_path / "datasets" / "org" / "demo" / "data").mkdir(parents=True)
    meta = json.dumps({"redpajama_set_name": "RedPajamaC4"})
    pq.write_table(pa.table({"text": ["x", "y"], "meta": [meta, meta]}),
                   tmp_path / "datasets" / "org" / "demo" / "data" / "train-0.parquet")
    hub = DirFileSystem(path=str(tmp_path), fs=LocalFileSystem())

    docs = documents(read_source("hf_hub", "org/demo", filesystem=hub))

    file = "datasets/org/demo/data/train-0.parquet"
    assert {doc_id: (d["slice"], d["text"]) for doc_id, d in docs.items()} == {
        f"{file}#0": ("c4", "x"), f"{file}#1": ("c4", "y")
    }


# --- CommonCrawl ----------------------------------------------------------------------------

PAGE = b"""<html><head><title>Bread</title><script>var tracking = 1;</script></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About</a></li></ul></nav>
<main><h1>Bread baking</h1><p>Knead the dough for ten minutes until it is smooth.</p>
<p>Let it rise &amp; rest for an hour.</p></main>
<footer>Copyright 2023 Example Inc. All rights reserved.</footer></body></html>"""


def _response(writer, record_id, url, status, content_type, body):
    http = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
    return writer.create_warc_record(
        url, "response", payload=io.BytesIO(body), http_headers=http,
        warc_headers_dict={"WARC-Date": "2023-02-01T10:00:00Z", "WARC-Record-ID": f"<urn:uuid:{record_id}>"},
    )


def test_warc_html_responses_become_main_text(ray_session, tmp_path):
    path = tmp_path / "crawl.warc.gz"
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        writer.write_record(writer.create_warcinfo_record("crawl.warc.gz", {"software": "test"}))
        writer.write_record(_response(writer, "1", "https://bread.test/", "200 OK", "text/html; charset=utf-8", PAGE))
        writer.write_record(_response(writer, "2", "https://bread.test/logo.png", "200 OK", "image/png", b"\x89PNG"))
        writer.write_record(_response(writer, "3", "https://bread.test/gone", "404 Not Found", "text/html", b"<p>x</p>"))
        writer.write_record(writer.create_warc_record(
            "dns:bread.test", "response", payload=io.BytesIO(b"bread.test. 300 IN A 192.0.2.1"),
            warc_content_type="text/dns",
        ))

    docs = documents(read_source("warc", str(path)))

    assert docs == {
        f"{path}#urn:uuid:1": {
            "doc_id": f"{path}#urn:uuid:1",
            "slice": "common_crawl",
            "text": "Bread baking\n\nKnead the dough for ten minutes until it is smooth.\n\nLet it rise & rest for an hour.",
            "meta": {"url": "https://bread.test/", "timestamp": "2023-02-01T10:00:00Z"},
        }
    }


def test_wet_conversion_records_are_documents(ray_session, tmp_path):
    path = tmp_path / "crawl.warc.wet.gz"
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        writer.write_record(writer.create_warcinfo_record("crawl.warc.wet.gz", {"software": "test"}))
        for number, (url, text) in enumerate([("https://a.test/", "Première page.\nSecond line."),
                                              ("https://b.test/", "Another page.")], start=1):
            writer.write_record(writer.create_warc_record(
                url, "conversion", payload=io.BytesIO(text.encode()), warc_content_type="text/plain",
                warc_headers_dict={"WARC-Date": f"2023-02-0{number}T00:00:00Z",
                                   "WARC-Record-ID": f"<urn:uuid:{number}>"},
            ))

    docs = documents(read_source("wet", str(path), "c4"))

    assert {d["doc_id"]: (d["slice"], d["text"], d["meta"]) for d in docs.values()} == {
        f"{path}#urn:uuid:1": ("c4", "Première page.\nSecond line.",
                               {"url": "https://a.test/", "timestamp": "2023-02-01T00:00:00Z"}),
        f"{path}#urn:uuid:2": ("c4", "Another page.", {"url": "https://b.test/", "timestamp": "2023-02-02T00:00:00Z"}),
    }

    garbage = tmp_path / "garbage.wet"
    garbage.write_text("this is not a WARC file\n" * 3)
    docs, rejected = read_all(read_source("wet", str(garbage)))
    [(doc_id, row)] = rejected.items()
    assert not docs and doc_id.startswith(f"{garbage}#offset-") and row["slice"] == "common_crawl"
    assert row[READ_ERROR].startswith(f"{garbage}: byte ") and "not a readable WARC file from the start" in row[READ_ERROR]


# --- Wikipedia ------------------------------------------------------------------------------

ARTICLE = """{{Infobox settlement|name=Paris|population=2,100,000}}
'''Paris''' is the [[capital city|capital]] of [[France]].<ref>{{cite web|url=https://example.org}}</ref> \
It has many [[museum]]s.<ref name="m"/>

== History ==
The city was founded in the 3rd century BC.{{citation needed}}
{| class="wikitable"
! Year !! Population
|-
| 2020 || 2,100,000
|}
[[File:Paris.jpg|thumb|The [[Eiffel Tower]]]]
[[Category:Capitals in Europe]]
__NOTOC__"""


def _page(title, ns, page_id, text, redirect=False):
    return f"""  <page>
    <title>{escape(title)}</title>
    <ns>{ns}</ns>
    <id>{page_id}</id>{'<redirect title="Paris" />' if redirect else ''}
    <revision>
      <id>{page_id}00</id>
      <timestamp>2023-03-01T12:00:00Z</timestamp>
      <text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text>
    </revision>
  </page>
"""


def test_mediawiki_dump_articles_only_clean_text(ray_session, tmp_path):
    dump = f"""<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <namespaces>
      <namespace key="-2" case="first-letter">Media</namespace>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
    </namespaces>
  </siteinfo>
{_page("Paris", 0, 22989, ARTICLE)}{_page("Paris, France", 0, 5, "#REDIRECT [[Paris]]", redirect=True)}\
{_page("Talk:Paris", 1, 6, "Is Paris big? [[User:X]]")}{_page("Lutetia", 0, 7, "#REDIRECT [[Paris]]")}</mediawiki>
"""
    path = tmp_path / "enwiki-pages-articles1.xml.bz2"
    path.write_bytes(bz2.compress(dump.encode()))

    docs = documents(read_source("mediawiki", str(path)))

    assert docs == {
        f"{path}#22989": {
            "doc_id": f"{path}#22989",
            "slice": "wikipedia",
            "text": "Paris is the capital of France. It has many museums.\n\n"
                    "History\nThe city was founded in the 3rd century BC.",
            "meta": {"title": "Paris", "url": "https://en.wikipedia.org/wiki/Paris", "language": "en",
                     "timestamp": "2023-03-01T12:00:00Z"},
        }
    }


def test_mediawiki_truncated_dump_names_file_and_line(ray_session, tmp_path):
    path = tmp_path / "cut.xml"
    path.write_text(f'<mediawiki xml:lang="en">\n{_page("Paris", 0, 1, "Paris is big.")}<page>\n<title>B</title>\n<id>2')
    docs, rejected = read_all(read_source("mediawiki", str(path)))
    assert list(docs) == [f"{path}#1"]
    [(doc_id, row)] = rejected.items()
    line = 1 + _page("Paris", 0, 1, "Paris is big.").count("\n") + 3  # the last line: the file ends in <id>
    assert doc_id == f"{path}#xml-line-{line}" and row["slice"] == "wikipedia"
    assert row[READ_ERROR].startswith(f"{path}: line {line}, column ")
    assert "malformed XML after page 1" in row[READ_ERROR]
    with pytest.raises(Exception, match=f"{path}: 1 record"):
        read_source("mediawiki", str(path), on_bad_input="fail").take_all()


# --- GitHub ---------------------------------------------------------------------------------

APP_PY = """#!/usr/bin/env python
# Copyright (c) 2023 Demo Authors
# Licensed under the MIT License.

\"\"\"Say hello.\"\"\"
print("hello")
"""
MAIN_GO = """/*
 * Copyright 2022 Tool Authors.
 * This program is free software under the GNU General Public License.
 */

// Package main runs the tool.
package main
"""


def test_github_archive_and_directory_one_record_per_source_file(ray_session, tmp_path):
    archive = tmp_path / "demo-main.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("demo-main/LICENSE", MIT_TEXT)
        zf.writestr("demo-main/src/app.py", APP_PY)
        zf.writestr("demo-main/README.md", "# Demo\n\nSays hello.\n")
        zf.writestr("demo-main/logo.png", b"\x89PNG\r\n\x1a\n\0\0")
        zf.writestr("demo-main/lib/blob.c", b"\0\1\2binary")
    repo = tmp_path / "tool"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "config.py").write_text("x = 1\n")
    (repo / "COPYING").write_text(GPL3_TEXT)
    (repo / "main.go").write_text(MAIN_GO)
    (repo / "_build.sh").write_text("echo build\n")

    docs = documents(read_source("github", [str(archive), str(repo)]))

    def github(path, text, repo_name, language, licence):
        return {"slice": "github", "text": text,
                "meta": {"repo": repo_name, "path": path, "language": language, "licence": licence}}

    assert {doc_id: {k: v for k, v in d.items() if k != "doc_id"} for doc_id, d in docs.items()} == {
        f"{archive}#src/app.py": github("src/app.py", '#!/usr/bin/env python\n"""Say hello."""\nprint("hello")\n',
                                        "demo-main", "Python", "MIT"),
        f"{archive}#README.md": github("README.md", "# Demo\n\nSays hello.\n", "demo-main", "Markdown", "MIT"),
        f"{repo}#main.go": github("main.go", "// Package main runs the tool.\npackage main\n", "tool", "Go", "GPL-3.0"),
        f"{repo}#_build.sh": github("_build.sh", "echo build\n", "tool", "Shell", "GPL-3.0"),
    }

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really a zip")
    docs, rejected = read_all(read_source("github", str(broken)))
    assert not docs and list(rejected) == [str(broken)] and rejected[str(broken)]["slice"] == "github"
    assert rejected[str(broken)][READ_ERROR].startswith(f"{broken}: the project: not a readable directory or archive")
    with pytest.raises(Exception, match=f"{broken}: 1 record"):
        read_source("github", str(broken), on_bad_input="fail").take_all()


def test_detect_licence_by_key_phrases():
    assert detect_licence(MIT_TEXT) == "MIT"
    assert detect_licence(GPL3_TEXT) == "GPL-3.0"
    assert detect_licence("Apache License\n Version 2.0, January 2004") == "Apache-2.0"
    bsd = "Redistribution and use in source and binary forms, with or without modification"
    assert detect_licence(bsd) == "BSD-2-Clause"
    assert detect_licence(bsd + ". 3. Neither the name of the copyright holder") == "BSD-3-Clause"
    assert detect_licence("GNU LESSER GENERAL PUBLIC LICENSE Version 3") == "LGPL-3.0"
    assert detect_licence("All yours.") == "unknown"


def test_strip_licence_header_keeps_code_and_ordinary_comments():
    assert cleaning.strip_licence_header("# Parse the license file.\nimport os\n", "Python") == (
        "# Parse the license file.\nimport os\n"
    )
    assert cleaning.strip_licence_header("// SPDX-License-Identifier: MIT\n\nint x;\n", "C") == "int x;\n"
    assert cleaning.strip_licence_header("-- Copyright 2020 X\nSELECT 1;\n", "SQL") == "SELECT 1;\n"
    assert cleaning.strip_licence_header("<!-- (c) 2020 X -->\n<p>hi</p>\n", "HTML") == "<p>hi</p>\n"


# --- arXiv ----------------------------------------------------------------------------------

MAIN_TEX = r"""\documentclass{article}
\newcommand{\R}{\mathbb{R}}
\newcommand{\Rn}{\R^n}
\newcommand{\pair}[2]{(#1, #2)}
\def\eps{\varepsilon}
\begin{document}
\maketitle
% \section{An abandoned introduction}
\section{Introduction}
We work in \Rn{} with 50\% of $\eps$. % a remark to co-authors
% a whole commented line
The pair \pair{a}{b} keeps its arguments.
\input{method}
\bibliography{refs}
\section{Not reached}
\end{document}
"""
METHOD_TEX = r"""\section{Method}
We use \R.
\appendix
\section{Proofs}
"""


def test_arxiv_projects_cleaned_as_redpajama(ray_session, tmp_path):
    paper = tmp_path / "2301.00001"
    paper.mkdir()
    (paper / "main.tex").write_text(MAIN_TEX)
    (paper / "method.tex").write_text(METHOD_TEX)
    (paper / "figure.pdf").write_bytes(b"%PDF-1.4")
    tarball = tmp_path / "2302.00002v2.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        source = "\\documentclass{article}\n\\begin{document}\n\\section*{Only}\nCaf\xe9 text.\n\\end{document}"
        data = source.encode("cp1252")
        info = tarfile.TarInfo("paper.tex")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    single = tmp_path / "hep-th9901001.gz"
    single.write_bytes(gzip.compress(b"\\section{Strings}\nVibrations.\n"))
    for path in (paper, tarball, single):
        os.utime(path, (EPOCH_2023, EPOCH_2023))

    docs = documents(read_source("arxiv", [str(paper), str(tarball), str(single)]))

    def meta(arxiv_id, yymm):
        return {"arxiv_id": arxiv_id, "yymm": yymm, "url": f"https://arxiv.org/abs/{arxiv_id}",
                "timestamp": "2023-01-01T00:00:00+00:00"}

    assert {doc_id: (d["slice"], d["text"], d["meta"]) for doc_id, d in docs.items()} == {
        str(paper): (
            "arxiv",
            "\\section{Introduction}\nWe work in \\mathbb{R}^n{} with 50\\% of $\\varepsilon$.\n"
            "The pair \\pair{a}{b} keeps its arguments.\n\\input{method}\n\n"
            "\\section{Method}\nWe use \\mathbb{R}.",
            meta("2301.00001", "2301"),
        ),
        str(tarball): ("arxiv", "\\section*{Only}\nCafé text.", meta("2302.00002v2", "2302")),
        str(single): ("arxiv", "\\section{Strings}\nVibrations.", meta("hep-th9901001", None)),
    }


# --- StackExchange --------------------------------------------------------------------------


def _post(**attributes):
    return "  <row " + " ".join(f"{name}={quoteattr(str(value))}" for name, value in attributes.items()) + " />\n"


def test_stackexchange_questions_with_answers_by_numeric_score(ray_session, tmp_path):
    site = tmp_path / "cooking.stackexchange.com"
    site.mkdir()
    (site / "Users.xml").write_text('<?xml version="1.0"?>\n<users>\n  <row Id="1" />\n</users>\n')
    (site / "Posts.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
        + _post(Id=1, PostTypeId=1, CreationDate="2010-07-09T19:04:30.567", Score=12, Title="Kneading time",
                Body="<p>How long should I knead <b>bread</b>?</p>")
        + _post(Id=2, PostTypeId=2, ParentId=1, Score=9, Body="<p>About ten minutes.</p>")
        + _post(Id=3, PostTypeId=2, ParentId=1, Score=10, Body="<p>Until it passes the <em>windowpane</em> test.</p>")
        + _post(Id=4, PostTypeId=2, ParentId=1, Score=-1, Body="<p>Forever.</p>")
        + _post(Id=5, PostTypeId=4, Score=0, Body="<p>Tag wiki excerpt</p>")
        + _post(Id=6, PostTypeId=2, ParentId=7, Score=3, Body="<p>Salt tightens gluten.</p>")
        + _post(Id=7, PostTypeId=1, CreationDate="2010-07-10T08:00:00.000", Score=0, Title="Why salt?",
                Body="<p>Why add salt &amp; sugar?</p><pre><code>salt = 2%</code></pre>")
        + "</posts>\n"
    )

    docs = documents(read_source("stackexchange", str(site), num_partitions=1))

    posts = site / "Posts.xml"
    assert docs == {
        f"{posts}#1": {
            "doc_id": f"{posts}#1",
            "slice": "stackexchange",
            "text": "Q: Kneading time\nHow long should I knead bread?\n"
                    "A: Until it passes the windowpane test.\nA: About ten minutes.\nA: Forever.",
            "meta": {"url": "https://cooking.stackexchange.com/questions/1",
                     "timestamp": "2010-07-09T19:04:30.567", "question_score": 12},
        },
        f"{posts}#7": {
            "doc_id": f"{posts}#7",
            "slice": "stackexchange",
            "text": "Q: Why salt?\nWhy add salt & sugar?\n\nsalt = 2%\nA: Salt tightens gluten.",
            "meta": {"url": "https://cooking.stackexchange.com/questions/7",
                     "timestamp": "2010-07-10T08:00:00.000", "question_score": 0},
        },
    }


# --- books ----------------------------------------------------------------------------------


def test_text_files_one_book_each_relative_paths_made_absolute(ray_session, tmp_path, monkeypatch):
    (tmp_path / "pride.txt").write_text("It is a truth universally acknowledged.\n")
    (tmp_path / "cafe.txt").write_bytes("Le café.\n".encode("cp1252"))
    monkeypatch.chdir(tmp_path)

    docs = documents(read_source("text", "."))

    assert docs == {
        str(tmp_path / "pride.txt"): {"doc_id": str(tmp_path / "pride.txt"), "slice": "books",
                                      "text": "It is a truth universally acknowledged.\n", "meta": {"title": "pride"}},
        str(tmp_path / "cafe.txt"): {"doc_id": str(tmp_path / "cafe.txt"), "slice": "books",
                                     "text": "Le café.\n", "meta": {"title": "cafe"}},
    }


def test_bundled_files_have_doc_ids_independent_of_where_the_package_is(ray_session):
    # Hash choices (samples, splits, shards, dedup ties) follow doc_ids: from two checkouts they must agree.
    path = resolve_path("bundled:corpus/arxiv.jsonl.gz")
    with gzip.open(path, "rt") as f:
        lines = sum(1 for _ in f)

    doc_ids = {r["doc_id"] for r in read_source("jsonl", path).take_all()}

    assert lines > 10 and doc_ids == {f"bundled:corpus/arxiv.jsonl.gz#{n}" for n in range(1, lines + 1)}


# --- cleaning without Ray -------------------------------------------------------------------


def test_clean_wikitext_drops_localised_media_links_and_magic_words():
    text = "Intro [[Fichier:x.jpg|vignette|Légende]] with [[a|b]] and [[c]].__TOC__\n\n\n\nEnd <ref>r</ref>."
    assert cleaning.clean_wikitext(text, ["Fichier"]) == "Intro with b and c.\n\nEnd ."


def test_clean_latex_project_without_section_is_empty():
    assert cleaning.clean_latex_project([r"\documentclass{article}\begin{document}Hi\end{document}"]) == ""
