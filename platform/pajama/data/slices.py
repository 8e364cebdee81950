"""The seven RedPajama-1T slices and the document schema every reader produces.

A document is one Ray Data row with the columns in DOCUMENT_COLUMNS; readers, cleaners, signals,
filters and dedup all pass these columns through (and may add their own). Readers add READ_ERROR:
null for a document, the reason for a record that could not be read (which the data stage
quarantines before any signal is computed).
"""

SLICES = ("common_crawl", "c4", "github", "books", "arxiv", "wikipedia", "stackexchange")

# RedPajama-Data-1T jsonl names its slice in meta["redpajama_set_name"].
SET_NAME_TO_SLICE = {
    "RedPajamaCommonCrawl": "common_crawl",
    "RedPajamaC4": "c4",
    "RedPajamaGithub": "github",
    "RedPajamaBook": "books",
    "RedPajamaArXiv": "arxiv",
    "RedPajamaWikipedia": "wikipedia",
    "RedPajamaStackExchange": "stackexchange",
}
SLICE_TO_SET_NAME = {v: k for k, v in SET_NAME_TO_SLICE.items()}

# doc_id: stable, unique within a corpus; slice: one of SLICES; text: the document;
# meta: a JSON object as text (url, timestamp, path, language, licence, title, ... per source).
DOCUMENT_COLUMNS = ("doc_id", "slice", "text", "meta")
# Why a record could not be read, naming its file and record; its slice is null when the record
# does not say (jsonl/parquet/hf input read without a slice argument).
READ_ERROR = "read_error"


def check_slice(name: str) -> str:
    if name not in SLICES:
        raise ValueError(f"unknown slice {name!r}; expected one of {', '.join(SLICES)}")
    return name
