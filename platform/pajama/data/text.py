"""RedPajama-V2's text normalisation, shared by the quality signals and deduplication.

RPv2 (togethercomputer/RedPajama-Data, app/src/core/document.py) normalises a text by removing
ASCII punctuation, lowercasing, stripping, making every whitespace run one space, then applying
unicode NFD. Signals count normalised words and lines; exact dedup hashes the normalised text and
fuzzy dedup shingles its words.
"""

import re
import string
import unicodedata

# Removes exactly the characters of RPv2's str.translate table (string.punctuation).
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]+")
_PUNCTUATION_BYTES = string.punctuation.encode("ascii")


def normalize_text(text: str) -> str:
    """RPv2's text normalisation: drop ASCII punctuation, lowercase, collapse whitespace, NFD."""
    # bytes.translate deletes the same characters from an ASCII text (most documents) several times faster
    if text.isascii():
        text = text.encode("ascii").translate(None, _PUNCTUATION_BYTES).decode("ascii")
    else:
        text = _PUNCTUATION.sub("", text)
    # split() and strip() share re's "\s" notion of whitespace, so this equals RPv2's re.sub(r"\s+", " ")
    return unicodedata.normalize("NFD", " ".join(text.lower().split()))
