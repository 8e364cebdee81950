"""Loads the bundled tasks' local data for lm-evaluation-harness (`custom_dataset` in the YAMLs).

The files sit beside this module, so the tasks need no network and no path configuration.
"""

import json
from pathlib import Path

import datasets


def load(file: str, **_) -> datasets.DatasetDict:
    """The JSON-lines `file` of this directory as the task's test split (the harness passes its
    metadata as further keyword arguments)."""
    text = (Path(__file__).parent / file).read_text()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(line) for line in text.splitlines()])})
