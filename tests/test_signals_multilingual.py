r"""Raw-word signals on real-looking documents in eight languages and scripts, against a plain re-computation
with NLTK's WordPunctTokenizer (RPv2's raw words) and RPv2's formulas (natural_language.py, content.py).

RPv2 ran NLTK 3.8, whose RegexpTokenizer compiles its pattern with Python's `re`; NLTK 3.10.4 compiles it
with the `regex` module, whose \w also takes combining marks (and joiners, connector punctuation other than
"_"), so on "cafe\u0301" the two NLTKs differ. Pajama's raw words are RPv2's: the re-computation here
compiles WordPunctTokenizer's own pattern with `re`, and checks that the installed NLTK gives the same
tokens on every document without such characters.
"""

import re
import string
import unicodedata
from importlib import resources

import pyarrow as pa
import pytest
from nltk.tokenize import WordPunctTokenizer
from pajama.data.signals import compute_signals

DOCUMENTS = {
    "de": "Über 2.500 Besucher kamen am Wochenende zum Straßenfest in München – trotz Regen! Die Veranstalter "
    "(Verein „Kultur_Süd e.V.“) zählten 17 Stände; der Eintritt war FREI. Auch König Ludwig Ⅱ hätte das "
    "gefallen... #Stadtfest",
    "fr": "L'été dernier, à Aix-en-Provence, nous avons visité le musée Granet… C'était magnifique ! Prix "
    "d'entrée : 5,50 € — gratuit pour les moins de 26 ans. «À refaire», a dit Zoé 😊 Le CAFÉ du coin sert "
    "un cafe\u0301 crème parfait.",
    "es": "¿Dónde está la estación de tren? Pregunté en la calle Mayor nº 12, pero nadie sabía nada. ¡QUÉ "
    "DESASTRE! Al final el señor Muñoz me ayudó y llegué a tiempo a la reunión de las 09:30… #Madrid2024",
    "it": "Perché l'università è chiusa? Gli studenti hanno protestato davanti all'ingresso: «Vogliamo "
    "risposte!». Il rettore ha promesso una soluzione entro venerdì 15 marzo. PIÙ trasparenza, per favore 🙏 "
    "Ⓐ come assemblea, 🅰 come adesso.",
    "ru": "Москва — столица России. В 2023 году город посетили более 20 млн туристов! Главная "
    "достопримечательность: Красная площадь. МЕТРО работает с 5:30 до 01:00; проезд стоит 62 ₽. "
    "Ёлка на площади стоит до конца января…",
    "el": "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. Η ΑΚΡΟΠΟΛΗ δέχεται χιλιάδες επισκέπτες κάθε χρόνο· το "
    "εισιτήριο κοστίζει 20 €. Ὁ Σωκράτης ἔζησε ἐδῶ; Η πλάκα γράφει «ΑΘΗΝΑΙ» και α\u0301λλα πολλά.",
    "zh": "北京是中华人民共和国的首都，人口约2189万。故宫（紫禁城）每年接待游客超过1500万人次！门票：60元/人。"
    "开放时间为8:30—17:00，周一闭馆……欢迎来访😀 #北京_旅游",
    "ar": "القاهرة هي عاصمة مصر، ويبلغ عدد سكانها أكثر من ٢٠ مليون نسمة. زرنا الأهرامات يوم ١٥ مارس؛ كانت "
    "الرحلة رائعة! يقع المتحف المصري الكبير قرب الجيزة... #مصر_2024",
}
RPV2_LIST_LANGUAGES = ("en", "de", "fr", "es", "it")
PRECISION = 8
WORD_PUNCT = r"\w+|[^\w\s]+"  # nltk.tokenize.WordPunctTokenizer's pattern
# NLTK 3.8's WordPunctTokenizer().tokenize: RegexpTokenizer's flags, Python's re
rpv2_raw_words = re.compile(WORD_PUNCT, re.UNICODE | re.MULTILINE | re.DOTALL).findall


def stop_words(language: str) -> set[str]:
    language = language if language in RPV2_LIST_LANGUAGES else "en"
    text = (resources.files("pajama") / "resources" / f"stopwords_{language}.txt").read_text(encoding="utf-8")
    return set(text.split())


def rpv2_normalize(text: str) -> str:
    # RPv2's utilities/text/normalization.py, step by step
    text = text.translate(str.maketrans("", "", string.punctuation)).lower().strip()
    return unicodedata.normalize("NFD", re.sub(r"\s+", " ", text))


def expected_signals(text: str, language: str) -> dict:
    raw = rpv2_raw_words(text)
    normalized_words = rpv2_normalize(text).split()
    n = len(raw)
    symbols = sum(text.count(symbol) for symbol in ("#", "...", "…"))
    with_alpha = sum(re.search(r"[a-zA-Z]", word) is not None for word in raw)
    stops = stop_words(language)
    return {
        "rps_doc_word_count": len(normalized_words),
        "rps_doc_mean_word_length": round(sum(map(len, normalized_words)) / len(normalized_words), PRECISION),
        "rps_doc_symbol_to_word_ratio": round(symbols / n, PRECISION),
        "rps_doc_frac_no_alph_words": round(1.0 - with_alpha / n, PRECISION),
        "rps_doc_frac_all_caps_words": round(sum(map(str.isupper, raw)) / n, PRECISION),
        "rps_doc_stop_word_fraction": round(sum(word in stops for word in raw) / n, PRECISION),
        "rpv1_alpha_chars_per_token": round(sum(map(str.isalpha, text)) / n, PRECISION),
    }


@pytest.fixture(scope="module")
def rows():
    return compute_signals(pa.table({"text": list(DOCUMENTS.values())})).to_pylist()


def test_documents_are_identified_in_their_language(rows):
    assert [row["language"] for row in rows] == list(DOCUMENTS)


@pytest.mark.parametrize("language", list(DOCUMENTS))
def test_raw_word_signals_match_nltk_and_rpv2_formulas(rows, language):
    row = rows[list(DOCUMENTS).index(language)]
    expected = expected_signals(DOCUMENTS[language], language)
    assert {name: row[name] for name in expected} == expected


def test_installed_nltk_gives_rpv2s_raw_words_without_combining_marks():
    tokenizer = WordPunctTokenizer()
    assert tokenizer._pattern == WORD_PUNCT
    unmarked = [text for text in DOCUMENTS.values() if not any(unicodedata.combining(char) for char in text)]
    assert len(unmarked) == len(DOCUMENTS) - 2  # French and Greek hold a combining acute accent
    for text in unmarked:
        assert tokenizer.tokenize(text) == rpv2_raw_words(text)
    # RPv2's NLTK split a combining mark from its letter ("\u0301" is no \w for re): 2 raw words
    assert rpv2_raw_words("cafe\u0301") == ["cafe", "\u0301"]
    row = compute_signals(pa.table({"text": ["cafe\u0301"]}), columns=["rpv1_alpha_chars_per_token"]).to_pylist()
    assert row[0]["rpv1_alpha_chars_per_token"] == 2.0  # c a f e over 2 raw words


def test_uppercase_symbols_and_numerals_count_as_all_caps_words():
    # raw words: Ⓐ 🅰 Ⅻ ǅ abc -> "Ⓐ", "🅰" (punctuation runs whose symbol Unicode counts as a capital
    # letter) and the numeral "Ⅻ" are upper case; the titlecase "ǅ" is not: 3 of 5
    row = compute_signals(pa.table({"text": ["Ⓐ 🅰 Ⅻ ǅ abc"]}), columns=["rps_doc_frac_all_caps_words"])
    assert row.column("rps_doc_frac_all_caps_words").to_pylist() == [0.6]


def test_a_batch_of_languages_matches_documents_one_by_one(rows):
    # word lists are chosen per document, also when one batch mixes languages
    for text, row in zip(DOCUMENTS.values(), rows):
        assert compute_signals(pa.table({"text": [text]})).to_pylist() == [row]
