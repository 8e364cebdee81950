"""Filter recipes: every rule keeps at its threshold and drops just past it; rule validation; apply_filters."""

import json
import pickle

import pyarrow as pa
import pytest
from pajama.data.filters import RECIPES_DIR, FilterRule, apply_filters, load_recipe
from pajama.data.signals import compute_signals
from pydantic import ValidationError

RECIPES = ("gopher", "c4", "rpv1_github", "rpv1_common_crawl", "rpv2_gopher_example")
RULES = {recipe: load_recipe(recipe) for recipe in RECIPES}

# Real documents that pass every rule of every recipe; each rule test changes one input of one of them.
ENGLISH = (
    "The river town grew slowly during the nineteenth century, and its people built mills along the water. "
    "Farmers brought grain to the market every week, while merchants traded cloth, salt and tools with "
    "visitors from the coast. A small school opened near the church in 1852, and children learned to read "
    "and write there. Over the years the railway arrived, new houses appeared on the hills, and the old "
    "bridge was replaced with a stronger one made of stone.\n"
    "Today the museum keeps letters, maps and photographs that show how daily life changed in the valley.\n"
)
CODE = (
    "import os\n\n\ndef list_python_files(root):\n"
    '    """Return the Python files below root."""\n'
    "    found = []\n    for folder, _, names in os.walk(root):\n"
    "        found.extend(os.path.join(folder, name) for name in names if name.endswith('.py'))\n"
    "    return sorted(found)\n"
)


@pytest.fixture(scope="module")
def passing_docs() -> pa.Table:
    batch = pa.table(
        {
            "doc_id": ["web", "code"],
            "slice": ["common_crawl", "github"],
            "text": [ENGLISH, CODE],
            "meta": [json.dumps({"url": "https://example.org/history"}), json.dumps({"path": "tools/files.py"})],
        }
    )
    # The model-based signals (pajama.data.references) of a web page RedPajama-1T kept.
    return compute_signals(batch).append_column("ccnet_bucket", pa.array(["head", None])).append_column(
        "rps_doc_ml_wikiref_score", pa.array([0.9, None], pa.float64()))


ALL_RULES = [(recipe, rule) for recipe, rules in RULES.items() for rule in rules]


def boundary_values(rule: FilterRule):
    """(a value the rule keeps, a value it drops), as close to the threshold as the op allows."""
    value = rule.value
    if rule.op == "endswith":
        return "src/module" + value[-1], "src/module.exe"
    if rule.op in ("in", "not_in"):
        inside, outside = value[0], value[0] + "_other"
        return (inside, outside) if rule.op == "in" else (outside, inside)
    if rule.op in ("==", "!="):
        other = value + "_other" if isinstance(value, str) else value + 1
        return (value, other) if rule.op == "==" else (other, value)
    step = 1 if isinstance(value, int) else 1e-6
    return {
        ">=": (value, value - step),
        ">": (value + step, value),
        "<=": (value, value + step),
        "<": (value - step, value),
    }[rule.op]


def doc_with(passing_docs: pa.Table, rule: FilterRule, value) -> pa.Table:
    """The passing document of the rule's slice, with the rule's input set to `value`."""
    row = 1 if rule.slices == ["github"] else 0
    doc = passing_docs.slice(row, 1)
    if rule.meta_field is not None:
        name, column = "meta", pa.array([json.dumps({rule.meta_field: value})])
    else:
        name, column = rule.signal, pa.array([value])
    return doc.set_column(doc.column_names.index(name), name, column)


# The published thresholds, so an edit to a recipe that departs from its source fails here.
PUBLISHED = {
    "gopher": {  # Rae et al. 2021, appendix A
        "rps_doc_word_count": [(">=", 50), ("<=", 100000)],
        "rps_doc_mean_word_length": [(">=", 3), ("<=", 10)],
        "rps_doc_symbol_to_word_ratio": [("<=", 0.1)],
        "rps_lines_start_with_bulletpoint_frac": [("<=", 0.9)],
        "rps_doc_frac_lines_end_with_ellipsis": [("<=", 0.3)],
        "gopher_frac_words_with_alpha": [(">=", 0.8)],
        "gopher_stop_word_count": [(">=", 2)],
        "gopher_frac_dupe_lines": [("<=", 0.3)],
        "gopher_frac_dupe_paragraphs": [("<=", 0.3)],
        "gopher_frac_chars_dupe_lines": [("<=", 0.2)],
        "gopher_frac_chars_dupe_paragraphs": [("<=", 0.2)],
        **{f"rps_doc_frac_chars_top_{n}gram": [("<=", v)] for n, v in ((2, 0.2), (3, 0.18), (4, 0.16))},
        **{f"rps_doc_frac_chars_dupe_{n}grams": [("<=", round(0.2 - n / 100, 2))] for n in range(5, 11)},
    },
    "c4": {  # Raffel et al. 2020, section 2.2
        "language": [("==", "en")],
        "rps_doc_lorem_ipsum": [("==", 0)],
        "rps_doc_curly_bracket": [("==", 0)],
        "rps_doc_ldnoobw_words": [("==", 0)],
        "c4_num_lines_kept": [(">=", 1)],
        "c4_num_sentences": [(">=", 3)],
    },
    "rpv1_common_crawl": {  # RedPajama-Data, branch rp_v1, data_prep/cc/README.md
        "ccnet_bucket": [("in", ["head", "middle"])],
        "rps_doc_ml_wikiref_score": [(">=", 0.25)],
    },
    "rpv2_gopher_example": {  # RedPajama-Data-V2's dataset card, gopher_rules_pass
        "rps_doc_word_count": [(">=", 50), ("<=", 10000)],
        "rps_doc_mean_word_length": [(">=", 3), ("<=", 10)],
        "rps_doc_symbol_to_word_ratio": [("<=", 0.1)],
        "rps_lines_start_with_bulletpoint_frac": [("<=", 0.9)],
        "rps_doc_frac_chars_top_2gram": [("<=", 0.2)],
    },
    "rpv1_github": {  # RedPajama-Data data_prep/github/github_run_filter.py
        "meta.path": [("endswith", 66)],
        "rpv1_max_line_length": [("<=", 1000)],
        "rpv1_mean_line_length": [("<=", 100)],
        "rpv1_frac_alnum_chars": [(">=", 0.25)],
        "rpv1_alpha_chars_per_token": [(">=", 1.5)],
    },
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_hold_the_published_thresholds(recipe):
    found: dict[str, list] = {}
    for rule in RULES[recipe]:
        value = len(rule.value) if rule.op == "endswith" else rule.value
        found.setdefault(rule.input_name, []).append((rule.op, value))
    assert found == PUBLISHED[recipe]


@pytest.mark.parametrize("recipe", RECIPES)
def test_passing_documents_are_kept(passing_docs, recipe):
    out = apply_filters(passing_docs, RULES[recipe])
    assert out.column("keep").to_pylist() == [True, True]
    assert out.column("drop_reason").to_pylist() == [None, None]


@pytest.mark.parametrize(("recipe", "rule"), ALL_RULES, ids=lambda x: x if isinstance(x, str) else x.name)
def test_rule_keeps_at_threshold(passing_docs, recipe, rule):
    keep_value, _ = boundary_values(rule)
    out = apply_filters(doc_with(passing_docs, rule, keep_value), RULES[recipe])
    assert out.column("keep").to_pylist() == [True]
    assert out.column("drop_reason").to_pylist() == [None]


@pytest.mark.parametrize(("recipe", "rule"), ALL_RULES, ids=lambda x: x if isinstance(x, str) else x.name)
def test_rule_drops_past_threshold(passing_docs, recipe, rule):
    _, drop_value = boundary_values(rule)
    out = apply_filters(doc_with(passing_docs, rule, drop_value), RULES[recipe])
    assert out.column("keep").to_pylist() == [False]
    assert out.column("drop_reason").to_pylist() == [rule.name]


def test_recipes_drop_real_bad_documents():
    batch = compute_signals(
        pa.table(
            {
                "slice": ["common_crawl", "common_crawl", "c4", "github", "github"],
                "text": [
                    "Buy now. Buy now. Buy now.",
                    ENGLISH + "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n",
                    ENGLISH.replace("stone.", "stone {citation}."),
                    CODE,
                    "x" * 1500 + "\n",
                ],
                "meta": ["{}", "{}", "{}", json.dumps({"path": "setup.exe"}), json.dumps({"path": "data.py"})],
            }
        )
    )
    out = apply_filters(batch, RULES["gopher"] + RULES["c4"] + RULES["rpv1_github"])
    assert out.column("drop_reason").to_pylist() == [
        "gopher_word_count_min",  # 6 words
        "c4_lorem_ipsum",
        "c4_curly_bracket",
        "rpv1_github_extension",
        "rpv1_github_max_line_length",
    ]


def test_github_whitelist_matches_like_str_endswith(passing_docs):
    rule = RULES["rpv1_github"][0]
    paths = ["Makefile", "docker/Dockerfile", "src/a.C", "src/a.c++", "notes.md", "src/a.PY", "a.py.bak", "README"]
    kept = [apply_filters(doc_with(passing_docs, rule, path), [rule]).column("keep")[0].as_py() for path in paths]
    assert kept == [True, True, True, True, True, False, False, False]


def test_first_failing_rule_is_the_reason():
    batch = pa.table({"score": [0.0, 5.0, 10.0], "lang": ["de", "de", "en"]})
    rules = [
        FilterRule(name="score_min", signal="score", op=">", value=1),
        FilterRule(name="english", signal="lang", op="in", value=["en"]),
    ]
    out = apply_filters(batch, rules)
    assert out.column("keep").to_pylist() == [False, False, True]
    assert out.column("drop_reason").to_pylist() == ["score_min", "english", None]
    assert out.select(["score", "lang"]).equals(batch)


def test_null_values_fail_the_rule():
    batch = pa.table({"x": pa.array([None, 1.0, 2.0]), "tag": pa.array([None, "a", "b"])})
    out = apply_filters(batch, [FilterRule(name="x_small", signal="x", op="<", value=5)])
    assert out.column("drop_reason").to_pylist() == ["x_small", None, None]
    out = apply_filters(batch, [FilterRule(name="not_b", signal="tag", op="not_in", value=["b"])])
    assert out.column("drop_reason").to_pylist() == ["not_b", None, "not_b"]
    out = apply_filters(batch, [FilterRule(name="not_a", signal="tag", op="!=", value="a")])
    assert out.column("drop_reason").to_pylist() == ["not_a", "not_a", None]


def test_rules_skip_other_slices_and_unreadable_meta_is_dropped():
    batch = pa.table(
        {
            "slice": ["github", "books", "github"],
            "meta": ['{"path": "a.py"}', "not json", "not json"],
        }
    )
    rule = FilterRule(name="ext", meta_field="path", op="endswith", value=[".py"], slices=["github"])
    out = apply_filters(batch, [rule])
    assert out.column("drop_reason").to_pylist() == [None, None, "ext"]


def test_rule_validation_names_the_field():
    with pytest.raises(ValidationError, match="op"):
        FilterRule(name="r", signal="s", op="=~", value=1)
    with pytest.raises(ValidationError, match=r"value\n.*compares with one value"):
        FilterRule(name="r", signal="s", op="<", value=[1, 2])
    with pytest.raises(ValidationError, match=r"value\n.*needs a number"):
        FilterRule(name="r", signal="s", op="<", value="1e-3")
    with pytest.raises(ValidationError, match=r"value\n.*non-empty list"):
        FilterRule(name="r", signal="s", op="in", value="en")
    with pytest.raises(ValidationError, match="exactly one of 'signal'"):
        FilterRule(name="r", signal="s", meta_field="path", op="==", value=1)
    with pytest.raises(ValidationError, match="exactly one of 'signal'"):
        FilterRule(name="r", op="==", value=1)
    with pytest.raises(ValidationError, match=r"slices\n.*unknown slice 'web'"):
        FilterRule(name="r", signal="s", op="==", value=1, slices=["web"])
    with pytest.raises(ValidationError, match="threshold"):
        FilterRule(name="r", signal="s", op="==", value=1, threshold=2)


def test_load_recipe_by_name_and_path_with_clear_errors(tmp_path):
    assert load_recipe(RECIPES_DIR / "c4.yaml") == load_recipe("c4")
    with pytest.raises(FileNotFoundError, match=r"recipes in .*'c4'"):
        load_recipe("no_such_recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - {name: a, signal: s, op: '>>', value: 1}\n  - {name: a, signal: s, op: '>', value: 1}\n"
    )
    with pytest.raises(ValueError, match=rf"{bad}(.|\n)*rules\.0\.op"):
        load_recipe(bad)
    bad.write_text("rules:\n  - {name: a, signal: s, op: '>', value: 1}\n  - {name: a, signal: t, op: '>', value: 1}\n")
    with pytest.raises(ValueError, match=r"unique(.|\n)*\['a'\]"):
        load_recipe(str(bad))


def test_misapplied_rules_are_reported(passing_docs):
    with pytest.raises(ValueError, match="no column 'rps_doc_wordcount'"):
        apply_filters(passing_docs, [FilterRule(name="typo", signal="rps_doc_wordcount", op=">", value=1)])
    with pytest.raises(ValueError, match="rps_lines_num_words_frac or rps_lines_num_words_mean"):
        apply_filters(passing_docs, [FilterRule(name="lines", signal="rps_lines_num_words", op=">", value=1)])
    with pytest.raises(ValueError, match="cannot apply '>'"):
        apply_filters(passing_docs, [FilterRule(name="lang", signal="language", op=">", value=1)])
    with pytest.raises(ValueError, match="already has"):
        apply_filters(apply_filters(passing_docs, []), [])


def test_rules_pickle_for_ray_workers():
    rules = RULES["gopher"]
    assert pickle.loads(pickle.dumps(rules)) == rules


def test_signals_needed_names_the_columns_rules_read():
    from pajama.data.filters import signals_needed
    from pajama.data.signals import SIGNAL_COLUMNS

    rules = load_recipe("gopher") + load_recipe("c4") + load_recipe("rpv1_github")
    needed = signals_needed(rules)
    assert set(needed) == {rule.signal for rule in rules if rule.signal is not None}
    assert needed == [name for name in SIGNAL_COLUMNS if name in needed]
    batch = pa.table({"slice": ["c4"], "text": ["A short page."], "meta": ["{}"]})
    verdict = apply_filters(compute_signals(batch, columns=needed), rules)
    assert verdict.column("drop_reason").to_pylist() == ["gopher_word_count_min"]


def test_the_data_fingerprint_covers_the_contents_of_its_filter_recipes(tmp_path):
    """Editing a rule of a recipe file re-runs the data stage (and what follows), not the references and
    signals stages; a comment changes nothing."""
    from pajama.config import load_config
    from pajama.dag import plan

    recipe = tmp_path / "mine.yaml"
    source = (RECIPES_DIR / "c4.yaml").read_text()
    recipe.write_text(source)

    def fingerprints() -> dict[str, str]:
        cfg = load_config("tiny", [f"data.filters=[{recipe}]", f"project.storage={tmp_path / 'storage'}"])
        return {step.stage: step.fingerprint for step in plan(cfg)}

    before = fingerprints()
    recipe.write_text("# a new comment\n" + source)
    assert fingerprints() == before
    recipe.write_text(source.replace("c4_num_sentences, op: \">=\", value: 3", "c4_num_sentences, op: \">=\", value: 4"))
    after = fingerprints()
    upstream_of_filters = ("references", "signals")
    assert all(after[stage] == before[stage] for stage in upstream_of_filters)
    assert all(after[stage] != before[stage] for stage in after if stage not in upstream_of_filters)


def test_the_ut1_recipe_drops_listed_domains_and_keeps_unlisted_ones():
    """none_of: a list signal holding one of the values fails; a null list (a domain listed nowhere) passes."""
    rules = load_recipe("ut1_blacklist")
    batch = pa.table({"slice": ["common_crawl", "common_crawl", "c4", "books"],
                      "rps_doc_ut1_blacklist": pa.array([["adult", "gambling"], None, ["shopping"], ["adult"]],
                                                        pa.list_(pa.string()))})
    out = apply_filters(batch, rules)
    assert out.column("keep").to_pylist() == [False, True, True, True]
    assert out.column("drop_reason").to_pylist() == ["ut1_blacklisted_domain", None, None, None]
