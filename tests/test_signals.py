"""Signal values against hand-computed ones on small texts (arithmetic in the comments)."""

import json
import math
import re
import tarfile
from importlib import resources

import pyarrow as pa
import pytest
from pajama.config import RESOURCES_DIR
from pajama.data.signals import SIGNAL_COLUMNS, _language_detector, compute_signals
from pajama.data.text import normalize_text

# A UT1 blacklist tree in the distributed format: blacklists/<category>/domains (+ urls, usage),
# global_usage, and porn -> adult as a link, as UT1 ships it
UT1 = RESOURCES_DIR / "ut1"


def signals_of(*texts: str) -> list[dict]:
    return compute_signals(pa.table({"text": list(texts)})).to_pylist()


def approx(value):
    # RPv2 rounds fractions to 8 decimals
    return pytest.approx(value, abs=1e-8)


# lines: "The cat sat. The cat ran!\n" (26 chars) and "Dogs bark...\n" (13 chars); 39 chars in all
SIMPLE = "The cat sat. The cat ran!\nDogs bark...\n"


def test_normalize_follows_rpv2():
    # ASCII punctuation dropped, lowercased, whitespace runs (incl. unicode spaces) -> " ", stripped, NFD
    assert normalize_text("  Héllo,\u2003WORLD!\n\tIt's  ") == "he\u0301llo world its"


def test_word_and_sentence_signals():
    row = signals_of(SIMPLE)[0]
    # normalised words: the cat sat the cat ran dogs bark
    assert row["rps_doc_word_count"] == 8
    # characters 3+3+3+3+3+3+4+4 = 26, over 8 words
    assert row["rps_doc_mean_word_length"] == approx(26 / 8)
    # raw (WordPunct) words: The cat sat . The cat ran ! Dogs bark ... -> 11; symbols: one "..."
    assert row["rps_doc_symbol_to_word_ratio"] == approx(1 / 11)
    # 8 of the 11 raw words hold an ASCII letter
    assert row["rps_doc_frac_no_alph_words"] == approx(1 - 8 / 11)
    # distinct: the cat sat ran dogs bark -> 6 of 8
    assert row["rps_doc_frac_unique_words"] == approx(6 / 8)
    # counts the:2 cat:2 and four words once: -(2 * 2/8 ln(2/8) + 4 * 1/8 ln(1/8))
    assert row["rps_doc_unigram_entropy"] == approx(-(2 * 0.25 * math.log(0.25) + 4 * 0.125 * math.log(0.125)))
    assert row["rps_doc_frac_all_caps_words"] == 0.0
    # stop words are matched case-sensitively on raw words (as RPv2): "The" is not "the"
    assert row["rps_doc_stop_word_fraction"] == 0.0
    # r"\b[^.!?]+[.!?]*": "The cat sat." "The cat ran!" "Dogs bark..."
    assert row["rps_doc_num_sentences"] == 3
    # line 2 ends with "...": 1 of 2 lines
    assert row["rps_doc_frac_lines_end_with_ellipsis"] == 0.5
    assert row["rps_doc_lorem_ipsum"] == 0.0
    assert row["rps_doc_curly_bracket"] == 0.0
    assert row["rps_doc_ldnoobw_words"] == 0
    # "the cat" is the only repeated bigram: (3+3) chars * 2 times / 26 chars; no trigram repeats
    assert row["rps_doc_frac_chars_top_2gram"] == approx(12 / 26)
    assert row["rps_doc_frac_chars_top_3gram"] == 0.0
    assert row["rps_doc_frac_chars_dupe_5grams"] == 0.0


def test_line_signals_and_their_aggregates():
    row = signals_of(SIMPLE)[0]
    # "...ran!" and "...bark..." both end in a terminal mark ("..." ends with ".")
    assert row["rps_lines_ending_with_terminal_punctution_mark"] == [1.0, 1.0]
    assert row["rps_lines_ending_with_terminal_punctution_mark_frac"] == 1.0
    # normalised lines: "the cat sat the cat ran" (6 words), "dogs bark" (2 words); mean 4
    assert row["rps_lines_num_words"] == [6, 2]
    assert row["rps_lines_num_words_mean"] == 4.0
    # uppercase T, T in 26 chars; D in 13 chars (raw lines keep their "\n")
    assert row["rps_lines_uppercase_letter_fraction"] == [approx(2 / 26), approx(1 / 13)]
    assert row["rps_lines_uppercase_letter_fraction_mean"] == approx(2 / 26)
    assert row["rps_lines_javascript_counts"] == [0, 0]
    assert row["rps_lines_numerical_chars_fraction"] == [0.0, 0.0]
    assert row["rps_lines_start_with_bulletpoint"] == [0.0, 0.0]
    assert row["rps_lines_start_with_bulletpoint_frac"] == 0.0


# lines: "• I LOVE lorem ipsum and {javascript}\n" (1+1+1+1+4+1+5+1+5+1+3+1+12+1 = 38 chars)
#        "– 42 is the answer to it\n"              (1+1+2+1+2+1+3+1+6+1+2+1+2+1 = 25 chars)
MIXED = "• I LOVE lorem ipsum and {javascript}\n– 42 is the answer to it\n"


def test_content_signals():
    row = signals_of(MIXED)[0]
    # raw words: • I LOVE lorem ipsum and { javascript } – 42 is the answer to it -> 16
    # all caps: I LOVE -> 2 of 16
    assert row["rps_doc_frac_all_caps_words"] == approx(2 / 16)
    # stop words (RPv2's English list): and is the to it -> 5 of 16
    assert row["rps_doc_stop_word_fraction"] == approx(5 / 16)
    # no ASCII letter: • { } – 42 -> 5 of 16
    assert row["rps_doc_frac_no_alph_words"] == approx(5 / 16)
    # normalised: "• i love lorem ipsum and javascript – 42 is the answer to it" (35 + 1 + 24 = 60 chars)
    assert row["rps_doc_lorem_ipsum"] == approx(1 / 60)
    # "{" and "}" in 38 + 25 = 63 raw chars
    assert row["rps_doc_curly_bracket"] == approx(2 / 63)
    # both lines start with a bullet symbol ("•", and RPv2 counts the en dash "–")
    assert row["rps_lines_start_with_bulletpoint"] == [1.0, 1.0]
    assert row["rps_lines_start_with_bulletpoint_frac"] == 1.0
    # "javascript" once in line 1: 1 of 2 lines
    assert row["rps_lines_javascript_counts"] == [1, 0]
    assert row["rps_lines_javascript_counts_frac"] == 0.5
    # uppercase I L O V E: 5 of 38; none of 25
    assert row["rps_lines_uppercase_letter_fraction"] == [approx(5 / 38), 0.0]
    # normalised line 2 "– 42 is the answer to it" has 24 chars, 2 of them digits
    assert row["rps_lines_numerical_chars_fraction"] == [0.0, approx(2 / 24)]
    assert row["rps_lines_numerical_chars_fraction_mean"] == approx(2 / 24 / 2)
    assert row["rps_lines_num_words"] == [7, 7]


def test_ldnoobw_counts_each_entry_length():
    # normalised: "nude photos xxx see 2 girls 1 cup": unigrams "nude", "xxx" and the 4-word entry "2 girls 1 cup"
    assert signals_of("Nude photos? XXX! See 2 girls 1 cup.")[0]["rps_doc_ldnoobw_words"] == 3


def test_word_lists_follow_the_document_language():
    german = "Der Hund und die Katze schlafen im Garten, weil es heute sehr warm ist."
    french = "Dans ce film, le voisin traite tout le monde de connard sans aucune raison valable."
    russian = "Москва — столица России, and the city is big."
    de, fr, ru = signals_of(german, french, russian)
    assert (de["language"], fr["language"], ru["language"]) == ("de", "fr", "ru")
    # raw words: Der Hund und die Katze schlafen im Garten , weil es heute sehr warm ist . -> 16;
    # German stop words: und die im weil es heute sehr ist -> 8 (not "Der": matched case-sensitively);
    # the English list holds none of them
    assert de["rps_doc_stop_word_fraction"] == approx(8 / 16)
    # 17 raw words; French stop words: ce le tout le de sans aucune -> 7; French LDNOOBW: "connard"
    assert fr["rps_doc_stop_word_fraction"] == approx(7 / 17)
    assert fr["rps_doc_ldnoobw_words"] == 1
    # Russian has no RPv2 list: the English one counts "and", "the", "is" of 11 raw words
    # (Москва — столица России , and the city is big .)
    assert ru["rps_doc_stop_word_fraction"] == approx(3 / 11)
    # entries are matched as LDNOOBW spells them (as RPv2): "möse" (NFC) never meets an NFD word
    assert signals_of("Sie sagte möse und lachte laut über den ganzen Witz.")[0]["rps_doc_ldnoobw_words"] == 0


def test_a_given_language_column_picks_the_lists():
    batch = pa.table({"text": ["sehr gut und die Katze", "sehr gut und die Katze"], "language": ["de", "en"]})
    out = compute_signals(batch, columns=["rps_doc_stop_word_fraction"])
    # German: sehr gut und die -> 4 of 5; English: none
    assert out.column("rps_doc_stop_word_fraction").to_pylist() == [approx(4 / 5), 0.0]
    assert out.column_names == ["text", "language", "rps_doc_stop_word_fraction"]


def test_stop_word_lists_hold_no_pure_punctuation_entry():
    # compute_signals looks stop words up among word runs only
    for language in ("en", "de", "fr", "es", "it"):
        text = (resources.files("pajama") / "resources" / f"stopwords_{language}.txt").read_text(encoding="utf-8")
        assert not [word for word in text.split() if re.fullmatch(r"[^\w\s]+", word)], language


def ut1_rows(urls: list, ut1_blacklist) -> list:
    meta = [None if url is None else json.dumps({"url": url} if url else {"title": "no url"}) for url in urls]
    batch = pa.table({"text": ["Some page text."] * len(urls), "meta": pa.array(meta, pa.string())})
    return compute_signals(batch, columns=["rps_doc_ut1_blacklist"], ut1_blacklist=ut1_blacklist).column(
        "rps_doc_ut1_blacklist"
    ).to_pylist()


UT1_URLS = [
    "https://www.casino-girls.example/page?id=1",  # parent domain in adult (so porn, its link) and gambling
    "http://BET.example:8080/odds",  # gambling; also in shopping, which is no RPv2 category
    "https://secure-login.example.evil.test/",  # a listed domain as a prefix is no match
    "http://203.0.113.7/x",  # an IP address listed in adult
    "https://docs-share.example/login.php",  # only in phishing/urls, which RPv2 does not read
    "",  # meta without a url
    None,  # no meta
]
UT1_CATEGORIES = [["adult", "gambling", "porn"], ["gambling"], None, ["adult", "porn"], None, None, None]


def test_ut1_blacklist_categories_from_the_tree_and_the_archive(tmp_path):
    assert ut1_rows(UT1_URLS, str(UT1)) == UT1_CATEGORIES
    assert ut1_rows(UT1_URLS, str(UT1 / "blacklists")) == UT1_CATEGORIES
    archive = tmp_path / "blacklists.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(UT1 / "blacklists", arcname="blacklists")
    assert ut1_rows(UT1_URLS, str(archive)) == UT1_CATEGORIES
    # without a blacklist, or without a meta column, the column is null
    assert ut1_rows(UT1_URLS[:2], None) == [None, None]
    out = compute_signals(pa.table({"text": ["x"]}), columns=["rps_doc_ut1_blacklist"], ut1_blacklist=str(UT1))
    assert out.column("rps_doc_ut1_blacklist").to_pylist() == [None]
    assert out.schema.field("rps_doc_ut1_blacklist").type == pa.list_(pa.string())


def test_ut1_blacklist_that_is_not_one_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such/blacklists.tar.gz"):
        ut1_rows(UT1_URLS[:1], str(tmp_path / "no" / "such" / "blacklists.tar.gz"))
    with pytest.raises(ValueError, match="is not a UT1 blacklist"):
        ut1_rows(UT1_URLS[:1], str(tmp_path))
    text_file = tmp_path / "domains.txt"
    text_file.write_text("casino.example\n")
    with pytest.raises(ValueError, match="domains.txt.*is not a UT1 blacklist"):
        ut1_rows(UT1_URLS[:1], str(text_file))


def test_repeated_ngram_signals():
    # words: one two three four five one two three four five six; chars (3+3+5+4+4) * 2 + 3 = 41
    row = signals_of("One two three four five. One two three four five six!")[0]
    # four bigrams repeat twice; the first seen ("one two", 6 chars) wins the tie: 6 * 2 / 41
    assert row["rps_doc_frac_chars_top_2gram"] == approx(12 / 41)
    # "one two three" (11 chars) twice; "one two three four" (15 chars) twice
    assert row["rps_doc_frac_chars_top_3gram"] == approx(22 / 41)
    assert row["rps_doc_frac_chars_top_4gram"] == approx(30 / 41)
    # the 5-gram "one two three four five" occurs twice: words 0..9 covered, 38 of 41 chars
    assert row["rps_doc_frac_chars_dupe_5grams"] == approx(38 / 41)
    # every 6-gram is unique
    assert row["rps_doc_frac_chars_dupe_6grams"] == 0.0
    assert row["rps_doc_frac_unique_words"] == approx(6 / 11)
    # five words twice, "six" once
    assert row["rps_doc_unigram_entropy"] == approx(10 / 11 * math.log(11 / 2) + 1 / 11 * math.log(11))


def test_batch_matches_documents_one_by_one():
    # n-gram ids are batch-wide: a repeat across documents must not count
    texts = [
        SIMPLE,
        "cat ran dogs bark the cat sat",
        "One two three four five. One two three four five six!",
        "",
        MIXED,
    ]
    assert signals_of(*texts) == [signals_of(text)[0] for text in texts]


def test_gopher_signals():
    # non-blank lines: Hello there / Hello there / Bye / Hello there / Hello there / Bye -> 4 repeats of 6
    # repeated characters 11 + 11 + 11 + 3 = 36 in 57; paragraphs: the same 27-char block twice
    text = "Hello there\nHello there\nBye\n\nHello there\nHello there\nBye\n"
    row = signals_of(text)[0]
    assert len(text) == 57
    assert row["gopher_frac_dupe_lines"] == approx(4 / 6)
    assert row["gopher_frac_chars_dupe_lines"] == approx(36 / 57)
    assert row["gopher_frac_dupe_paragraphs"] == approx(1 / 2)
    assert row["gopher_frac_chars_dupe_paragraphs"] == approx(27 / 57)
    mixed = signals_of(MIXED)[0]
    # whitespace words: 14, of which "•", "–", "42" hold no letter
    assert mixed["gopher_frac_words_with_alpha"] == approx(11 / 14)
    # Gopher's stop words among normalised words: and, the, to
    assert mixed["gopher_stop_word_count"] == 3


def test_c4_signals():
    text = (
        "We use cookies to improve this site for you.\n"  # policy notice: dropped
        "Please enable JavaScript to view this page now.\n"  # javascript: dropped
        "Short line here.\n"  # 3 words < 5: dropped
        "Ends without a mark of any kind\n"  # no terminal punctuation: dropped
        "Wait for it and see...\n"  # ellipsis: dropped
        "This line has five words. And another one here!\n"  # kept: 2 sentences
    )
    row = signals_of(text)[0]
    assert row["c4_num_lines_kept"] == 1
    assert row["c4_num_sentences"] == 2
    assert row["rps_lines_javascript_counts"][1] == 1


def test_rpv1_code_signals():
    # lines "def f(x):" (9) and "    return x + 1" (16); 27 chars with the two "\n"
    row = signals_of("def f(x):\n    return x + 1\n")[0]
    assert row["rpv1_max_line_length"] == 16
    assert row["rpv1_mean_line_length"] == 27 / 2
    # alphanumeric: def f x return x 1 -> 3+1+1+6+1+1 = 13 of 27; alphabetic 12
    assert row["rpv1_frac_alnum_chars"] == approx(13 / 27)
    # tokens: def f ( x ): return x + 1 -> 9
    assert row["rpv1_alpha_chars_per_token"] == approx(12 / 9)


def test_language_id():
    english, german, blank = signals_of(
        "The committee published its annual report on public transport and road safety this morning.",
        "Der Ausschuss hat heute Morgen seinen Jahresbericht über den öffentlichen Verkehr veröffentlicht.",
        " \n ",
    )
    assert english["language"] == "en" and 0.5 < english["language_score"] <= 1.0
    assert german["language"] == "de" and 0.5 < german["language_score"] <= 1.0
    assert blank["language"] is None and blank["language_score"] is None


def test_language_id_is_cc_nets_newlines_removed_score_rounded_to_two_decimals():
    # cc_net's split_by_lang.Classifier: predict(text.replace("\n", "")), scores.round(2)
    lines = "Der Ausschuss hat heute\nMorgen seinen Jahresbericht\nveröffentlicht."
    split, joined, spaced = signals_of(lines, lines.replace("\n", ""), lines.replace("\n", " "))
    assert (split["language"], split["language_score"]) == (joined["language"], joined["language_score"])
    assert split["language"] == "de"
    for row in (split, spaced):
        assert row["language_score"] == round(row["language_score"], 2)
    # the newlines are removed, not made spaces: "heuteMorgen" is another word than "heute Morgen"
    detector = _language_detector()
    scores = [detector.detect(text, k=1)[0]["score"] for text in (lines.replace("\n", ""), lines.replace("\n", " "))]
    assert scores[0] != scores[1] and round(scores[0], 2) == split["language_score"]


def test_empty_document_gives_nulls_where_undefined():
    row = signals_of("")[0]
    assert row["rps_doc_word_count"] == 0
    for name in (
        "rps_doc_mean_word_length",
        "rps_doc_frac_unique_words",
        "rps_doc_frac_no_alph_words",
        "rps_lines_num_words_mean",
        "gopher_frac_words_with_alpha",
        "rpv1_alpha_chars_per_token",
    ):
        assert row[name] is None, name
    # where RPv2 (or RPv1) reports 0 for an empty document, so do we
    for name in (
        "rps_doc_stop_word_fraction",
        "rps_doc_curly_bracket",
        "rps_doc_frac_chars_top_2gram",
        "rps_doc_frac_chars_dupe_5grams",
        "rpv1_frac_alnum_chars",
    ):
        assert row[name] == 0.0, name
    assert row["rps_lines_num_words"] == []


def test_keeps_input_columns_and_appends_all_signals():
    batch = pa.table({"doc_id": ["a"], "slice": ["c4"], "text": [SIMPLE], "meta": ["{}"]})
    out = compute_signals(batch)
    assert out.column_names == ["doc_id", "slice", "text", "meta", *SIGNAL_COLUMNS]
    assert out.schema.field("rps_lines_num_words").type == pa.list_(pa.int32())
    assert out.slice(0, 1).select(["doc_id", "slice", "text", "meta"]).equals(batch)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="null 'text'"):
        compute_signals(pa.table({"text": pa.array([None], pa.string())}))
    with pytest.raises(ValueError, match="needs a 'text' column"):
        compute_signals(pa.table({"body": ["x"]}))
    with pytest.raises(ValueError, match="already has signal columns"):
        compute_signals(compute_signals(pa.table({"text": ["x"]})))


def test_selected_columns_match_the_full_computation():
    texts = [SIMPLE, MIXED, "", "One two three four five. One two three four five six!", "Hello\n\nHello\n"]
    full = compute_signals(pa.table({"text": texts}))
    for columns in (
        ["rps_doc_word_count"],
        ["rps_lines_start_with_bulletpoint_frac", "rps_doc_frac_lines_end_with_ellipsis"],
        ["rps_lines_num_words", "rps_doc_lorem_ipsum", "gopher_frac_dupe_paragraphs", "c4_num_sentences"],
        ["rps_doc_frac_chars_dupe_7grams", "rps_doc_ldnoobw_words", "rpv1_alpha_chars_per_token"],
        ["language_score", "rps_doc_mean_word_length", "gopher_stop_word_count"],
        ["rps_doc_stop_word_fraction", "rps_doc_ut1_blacklist"],
    ):
        out = compute_signals(pa.table({"text": texts}), columns=columns)
        ordered = [name for name in SIGNAL_COLUMNS if name in columns]
        assert out.column_names == ["text", *ordered]
        assert out.select(ordered).equals(full.select(ordered)), columns
    with pytest.raises(ValueError, match="unknown signal"):
        compute_signals(pa.table({"text": ["x"]}), columns=["rps_doc_word_count", "no_such_signal"])
