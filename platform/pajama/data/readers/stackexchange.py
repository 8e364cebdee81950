"""Reader of StackExchange dumps: a site's Posts.xml becomes one document per question, `Q:` its
title and body, then `A:` each answer by score; answers are grouped with their question by a
shuffle, wherever they are in the file."""

import json
import logging
import posixpath
from dataclasses import replace
from xml.etree import ElementTree

import pyarrow as pa
import ray

from pajama.data import cleaning
from pajama.data.readers.common import (
    DOCUMENT_SCHEMA,
    XML_ERRORS,
    BadInputPolicy,
    DocumentFiles,
    Rejected,
    batched_tables,
    broken_xml,
)
from pajama.data.slices import READ_ERROR

logger = logging.getLogger(__name__)

_POST_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),  # the question's document: the grouping key
        ("post_id", pa.int64()),
        ("is_question", pa.bool_()),
        ("score", pa.int64()),
        ("text", pa.string()),
        ("meta", pa.string()),  # the question's; null on answers
        (READ_ERROR, pa.string()),  # a post that could not be read is a document of its own
    ]
)
_QUESTION, _ANSWER = "1", "2"


class _StackExchangePosts(DocumentFiles):
    """The questions and answers of Posts.xml as post rows, to be grouped into documents."""

    EXTENSIONS = [f"xml{compression}" for compression in ("", ".bz2", ".gz", ".zst")]

    def __init__(self, paths, *, site: str | None, **kwargs):
        super().__init__(paths, **kwargs)
        self._site = site

    def _tables(self, items, path):
        # Posts are not documents yet: the size limit applies to the questions with their answers.
        return batched_tables(items, path, replace(self._policy, max_document_bytes=None), schema=_POST_SCHEMA)

    def _documents(self, f, path):
        site = self._site or posixpath.basename(posixpath.dirname(path))
        root = None
        post_id = None
        try:
            for event, row in ElementTree.iterparse(f, events=("start", "end")):
                if root is None:
                    root = row
                if event != "end" or row.tag != "row":
                    continue
                attributes = dict(row.attrib)
                root.clear()  # Stack Overflow's Posts.xml holds tens of millions of rows
                if attributes.get("PostTypeId") in (_QUESTION, _ANSWER):
                    post_id = attributes.get("Id", "?")
                    yield self._post(attributes, path, site)
        except XML_ERRORS as error:
            yield broken_xml(path, error, post_id and f"post {post_id}", None)

    @staticmethod
    def _post(attributes: dict, path: str, site: str) -> dict | Rejected:
        where = f"post {attributes.get('Id', '?')}"
        # Its own doc_id, not its question's: the question stays a document without this post.
        doc_id = f"{path}#post-{attributes.get('Id', '?')}"
        is_question = attributes["PostTypeId"] == _QUESTION
        required = ("Id", "Score", "Body") + (("Title", "CreationDate") if is_question else ("ParentId",))
        missing = [name for name in required if name not in attributes]
        if missing:
            return Rejected(doc_id, where, f"missing attribute(s) {', '.join(missing)}", None,
                            attributes.get("Body", ""))
        try:
            post_id, score = int(attributes["Id"]), int(attributes["Score"])
            question_id = post_id if is_question else int(attributes["ParentId"])
        except ValueError as error:
            return Rejected(doc_id, where, f"non-numeric Id, Score or ParentId ({error})", None, attributes["Body"])
        body = cleaning.html_to_text(attributes["Body"])
        meta = None
        if is_question:
            body = "\n".join(part for part in (attributes["Title"].strip(), body) if part)
            meta = json.dumps(
                {
                    "url": f"https://{site}/questions/{question_id}",
                    "timestamp": attributes["CreationDate"],
                    "question_score": score,
                }
            )
        return {
            "doc_id": f"{path}#{question_id}",
            "post_id": post_id,
            "is_question": is_question,
            "score": score,
            "text": body,
            "meta": meta,
            READ_ERROR: None,
        }


def _question_document(posts: pa.Table, slice_name: str, policy: BadInputPolicy) -> pa.Table:
    """`Q: <title>\\n<body>\\nA: <answer>...`, answers by score (highest first), then by id."""
    rows = posts.to_pylist()
    path = rows[0]["doc_id"].rpartition("#")[0]
    if rows[0][READ_ERROR] is not None:  # posts that could not be read, each a bad-input document
        return pa.Table.from_pylist([{**row, "slice": slice_name} for row in rows], schema=DOCUMENT_SCHEMA)
    questions = [row for row in rows if row["is_question"]]
    answers = sorted((row for row in rows if not row["is_question"]), key=lambda row: (-row["score"], row["post_id"]))
    if not questions:
        logger.warning("%s: %d answer(s) left out: their question is not in Posts.xml", rows[0]["doc_id"], len(rows))
        return DOCUMENT_SCHEMA.empty_table()
    question = questions[0]
    if len(questions) > 1:
        item = Rejected(question["doc_id"], f"question {question['post_id']}",
                        f"appears {len(questions)} times in Posts.xml", slice_name, question["text"], question["meta"])
    else:
        text = "Q: " + question["text"] + "".join("\nA: " + answer["text"] for answer in answers)
        item = {"doc_id": question["doc_id"], "slice": slice_name, "text": text, "meta": question["meta"],
                READ_ERROR: None}
    return next(batched_tables([item], path, policy, "question"))  # fail: raises for a rejected item


def read_stackexchange(paths, slice_name, *, policy, filesystem=None, site=None, num_partitions=None):
    # A site folder means its Posts.xml (the dump's other files are users, votes, ...).
    paths = [path if ".xml" in posixpath.basename(path) else path.rstrip("/") + "/Posts.xml"
             for path in ([paths] if isinstance(paths, str) else paths)]
    posts = ray.data.read_datasource(
        _StackExchangePosts(paths, slice_name=None, policy=policy, filesystem=filesystem, site=site)
    )
    # Answers can be anywhere in the file relative to their question: a shuffle brings them together.
    return posts.groupby("doc_id", num_partitions=num_partitions).map_groups(
        _question_document, batch_format="pyarrow",
        fn_kwargs={"slice_name": slice_name or "stackexchange", "policy": policy},
    )
