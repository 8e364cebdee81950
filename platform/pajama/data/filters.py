"""Filter recipes as config: ordered rules over signal columns (or meta fields) that keep or drop documents.

A recipe is a YAML file (`pipelines/filters/<name>.yaml`):

    description: what the recipe reproduces and from where
    rules:
      - name: gopher_word_count_min      # reported as drop_reason when this is the first rule a doc fails
        signal: rps_doc_word_count       # any column of the batch (see pajama.data.signals)
        op: ">="                         # < <= > >= == != in not_in endswith none_of
        value: 50
        slices: [common_crawl, c4]       # optional: the rule applies only to documents of these slices
      - name: rpv1_github_extension
        meta_field: path                 # instead of a column: a top-level key of the JSON `meta` column
        op: endswith                     # value ends with any of the listed suffixes (str.endswith)
        value: [".py", "Makefile"]
      - name: ut1_adult
        signal: rps_doc_ut1_blacklist    # a list column: keep documents none of whose items is listed
        op: none_of
        value: [adult, phishing]

`apply_filters(batch, rules)` appends `keep` (bool) and `drop_reason` (the name of the first rule the
document fails, null when kept). A document fails a rule that applies to it when the comparison is false
or its value is null (a signal undefined for it, a missing meta field or unreadable meta), except with
`none_of`, whose null list holds nothing (a domain listed in no category); rules for other slices are
skipped. Use it as `ds.map_batches(apply_filters, fn_kwargs={"rules": rules},
batch_format="pyarrow")`. To apply several recipes, concatenate their rule lists. `signals_needed(rules)`
names the signal columns the rules read: `compute_signals(batch, columns=signals_needed(rules))` computes
only those.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import reduce
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pajama.config import PIPELINES_DIR
from pajama.data.slices import check_slice

RECIPES_DIR = PIPELINES_DIR / "filters"

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
_ORDERING_OPS = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}
_EQUALITY_OPS = {"==": pc.equal, "!=": pc.not_equal}
_LIST_OPS = ("in", "not_in", "endswith", "none_of")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader when PyYAML has it


class FilterRule(BaseModel):
    """One keep-condition: documents of `slices` (all when omitted) whose input satisfies `op value` pass."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    signal: str | None = None
    meta_field: str | None = None
    op: Literal["<", "<=", ">", ">=", "==", "!=", "in", "not_in", "endswith", "none_of"]
    value: Scalar | list[Scalar]
    slices: list[str] | None = None

    @field_validator("value")
    @classmethod
    def _value_fits_op(cls, value, info: ValidationInfo):
        op = info.data.get("op")
        if op is None:  # the op itself was invalid and is reported on its own
            return value
        if op in _LIST_OPS:
            if not isinstance(value, list) or not value:
                raise ValueError(f"op {op!r} needs a non-empty list of values")
            if op == "endswith" and not all(isinstance(item, str) for item in value):
                raise ValueError("op 'endswith' needs a list of strings (suffixes)")
        elif isinstance(value, list):
            raise ValueError(f"op {op!r} compares with one value, not a list")
        elif op in _ORDERING_OPS and isinstance(value, (bool, str)):
            raise ValueError(f"op {op!r} needs a number (YAML reads 1e-3 as text: write 1.0e-3)")
        return value

    @field_validator("slices")
    @classmethod
    def _known_slices(cls, slices):
        if slices is not None:
            if not slices:
                raise ValueError("give at least one slice, or leave 'slices' out to apply to all")
            for name in slices:
                check_slice(name)
        return slices

    @model_validator(mode="after")
    def _one_input(self):
        if (self.signal is None) == (self.meta_field is None):
            raise ValueError("give exactly one of 'signal' (a column) or 'meta_field' (a key of meta)")
        return self

    @property
    def input_name(self) -> str:
        return self.signal if self.signal is not None else f"meta.{self.meta_field}"


# Applied before every recipe: a document that cc_net's paragraph dedup (pajama.data.signal_stage) left
# without a line.
DUPLICATE_PARAGRAPHS_RULE = FilterRule(name="duplicate_paragraphs", signal="ccnet_nlines", op=">", value=0)


class FilterRecipe(BaseModel):
    """A recipe file: a description and its rules, in the order they are checked."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    rules: list[FilterRule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules):
        names = [rule.name for rule in rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique (they become drop_reason); repeated: {repeated}")
        return rules


def load_recipe(name_or_path: str | Path) -> list[FilterRule]:
    """Rules of a recipe: a bare name loads pipelines/filters/<name>.yaml, anything else is a file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no filter recipe at {path}; recipes in {RECIPES_DIR}: {known}")
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        return FilterRecipe.model_validate(document).rules
    except (yaml.YAMLError, ValidationError) as err:
        raise ValueError(f"invalid filter recipe {path}:\n{err}") from err


def recipe_rules(cfg) -> dict[str, list[dict]]:
    """The rules of each filter recipe a data config names, as loaded: what the data stage's
    fingerprint covers, so that editing a recipe file re-runs the stage (a comment does not)."""
    return {name: [rule.model_dump(mode="json") for rule in load_recipe(name)] for name in cfg.filters}


def signals_needed(rules: Sequence[FilterRule]) -> list[str]:
    """The columns of pajama.data.signals.SIGNAL_COLUMNS that `rules` read, in that order."""
    from pajama.data.signals import SIGNAL_COLUMNS

    read = {rule.signal for rule in rules if rule.signal is not None}
    return [name for name in SIGNAL_COLUMNS if name in read]


def apply_filters(batch: pa.Table, rules: Sequence[FilterRule]) -> pa.Table:
    """Append `keep` and `drop_reason` (first failing rule's name) to `batch`."""
    taken = sorted({"keep", "drop_reason"} & set(batch.column_names))
    if taken:
        raise ValueError(
            f"apply_filters: the batch already has {taken}; apply all rules in one call (rules_a + rules_b)"
        )
    reasons = np.full(batch.num_rows, None, dtype=object)
    parsed_meta: list | None = None
    for rule in rules:
        undecided = _applies(batch, rule) & np.equal(reasons, None)
        if not undecided.any():
            continue
        if rule.meta_field is not None:
            parsed_meta = parsed_meta if parsed_meta is not None else _parse_meta(batch)
            values = _meta_values(parsed_meta, rule)
        else:
            values = _column(batch, rule)
        reasons[undecided & ~_passes(rule, values)] = rule.name
    keep = pa.array(np.equal(reasons, None), pa.bool_())
    return batch.append_column("keep", keep).append_column("drop_reason", pa.array(reasons, pa.string()))


def _applies(batch: pa.Table, rule: FilterRule) -> np.ndarray:
    if rule.slices is None:
        return np.ones(batch.num_rows, bool)
    if "slice" not in batch.column_names:
        raise ValueError(f"rule {rule.name!r} is limited to slices {rule.slices} but the batch has no 'slice' column")
    in_slices = pc.is_in(batch.column("slice"), value_set=pa.array(rule.slices, pa.string()))
    return in_slices.to_numpy(zero_copy_only=False)


def _column(batch: pa.Table, rule: FilterRule) -> pa.ChunkedArray:
    if rule.signal not in batch.column_names:
        raise ValueError(
            f"rule {rule.name!r}: the batch has no column {rule.signal!r}; compute it first "
            "(pajama.data.signals.compute_signals) or fix the rule's 'signal'"
        )
    values = batch.column(rule.signal)
    if (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)) and rule.op != "none_of":
        raise ValueError(
            f"rule {rule.name!r}: {rule.signal!r} holds one value per line; filter on its document-level "
            f"aggregate ({rule.signal}_frac or {rule.signal}_mean) instead"
        )
    return values


def _parse_meta(batch: pa.Table) -> list:
    if "meta" not in batch.column_names:
        raise ValueError("rules with 'meta_field' need a 'meta' column (JSON text) in the batch")
    parsed = []
    for text in batch.column("meta").to_pylist():
        try:
            parsed.append(json.loads(text) if text is not None else None)
        except json.JSONDecodeError:
            parsed.append(None)  # fails every meta rule that applies to it, under that rule's name
    return parsed


def _meta_values(parsed_meta: list, rule: FilterRule) -> pa.Array:
    values = [meta.get(rule.meta_field) if isinstance(meta, dict) else None for meta in parsed_meta]
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"rule {rule.name!r}: meta field {rule.meta_field!r} mixes value types: {err}") from err


def _holds_any(lists, items: list) -> np.ndarray:
    """Whether each list of a list column holds one of `items` (a null list holds none)."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    held = np.zeros(len(lists), bool)
    found = pc.is_in(pc.list_flatten(lists), value_set=pa.array(items)).to_numpy(zero_copy_only=False)
    held[pc.list_parent_indices(lists).to_numpy()[found]] = True
    return held


def _passes(rule: FilterRule, values) -> np.ndarray:
    """Whether each value satisfies the rule; null never does."""
    try:
        if rule.op in _ORDERING_OPS:
            result = _ORDERING_OPS[rule.op](values, rule.value)
        elif rule.op in _EQUALITY_OPS:
            result = _EQUALITY_OPS[rule.op](values, rule.value)
        elif rule.op == "none_of":
            return ~_holds_any(values, rule.value)
        elif rule.op == "endswith":
            result = reduce(pc.or_, (pc.ends_with(values, pattern=suffix) for suffix in rule.value))
        else:
            result = pc.is_in(values, value_set=pa.array(rule.value))
            if rule.op == "not_in":
                result = pc.and_(pc.invert(result), pc.is_valid(values))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(
            f"rule {rule.name!r}: cannot apply {rule.op!r} {rule.value!r} to {rule.input_name} "
            f"of type {values.type}: {err}"
        ) from err
    return pc.fill_null(result, False).to_numpy(zero_copy_only=False)
