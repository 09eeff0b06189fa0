"""The page-language check: the function-word vote answers only when langdetect would give the
same answer, and hands everything less clear-cut to langdetect."""

from __future__ import annotations

import pytest

from spiders import language
from spiders.language import FUNCTION_WORDS, detect_language, langdetect_language, vote_language
from spiders.sources.fault_site import ENGLISH, GERMAN

CLEAR = {
    "en": ENGLISH,
    "de": GERMAN,
    "en-gallery": (
        "A watercolour painting of a fox in the snow was the first picture she sold. She had "
        "worked on it for three weeks, layering thin washes of blue and grey until the shadows "
        "under the trees looked cold enough to touch, and then added the animal itself in a "
        "single afternoon with a brush that was almost dry."
    ),
}
UNCLEAR = {
    # Danish shares "at" and "for" with English; Afrikaans shares much of Dutch's vocabulary.
    "da": (
        "Det gamle fyrtårn står på et klippefremspring over havnen. Hver aften gik fyrpasserne "
        "op ad vindeltrappen for at tænde lampen, og lyset kunne ses langt ude på havet. I dag er "
        "tårnet automatisk, men besøgende går stadig ad kyststien for at se bølgerne bryde mod "
        "klipperne, og malere kommer hver sommer for at male det hvide tårn."
    ),
    "af": (
        "Die ou vuurtoring staan op 'n graniet landpunt bo die hawe. Elke aand het die wagters "
        "die wenteltrap opgeklim om die lamp aan te steek, en die ligstraal was van ver af op see "
        "sigbaar. Vandag werk die toring outomaties, maar besoekers stap steeds met die kuspad "
        "langs om te kyk hoe die golwe teen die rotse breek."
    ),
    "mixed": (
        "Der alte Leuchtturm steht auf einer Landzunge über dem Hafen. The old lighthouse stands "
        "on a granite headland above the harbour. Jeden Abend stiegen die Wärter die Treppe "
        "hinauf. Its keepers climbed the spiral stairs each evening to light the lamp. Heute "
        "arbeitet der Turm automatisch. Today the tower is automated and visitors walk the path."
    ),
    "names": (
        "Lighthouse Keeper Harbour Granite Headland Ocean Wave Tower Lamp Beacon Coast Cliff "
        "Stairs Evening Summer Painter Visitor Path Rock Sky Sea Mile Island Bay Dawn "
    ) * 2,
}


@pytest.mark.parametrize("name", sorted(CLEAR))
def test_vote_answers_clear_prose_as_langdetect_does(name: str) -> None:
    text = CLEAR[name]
    assert vote_language(text) == langdetect_language(text) == name.split("-")[0]


@pytest.mark.parametrize("name", sorted(UNCLEAR))
def test_vote_abstains_when_not_clear_cut(name: str) -> None:
    assert vote_language(UNCLEAR[name]) is None


def test_detect_language_uses_langdetect_only_when_the_vote_abstains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = {name: langdetect_language(text) for name, text in UNCLEAR.items()}
    assert expected["da"] == "da" and expected["af"] == "af"
    calls: list[str] = []

    def counting(text: str) -> str | None:
        calls.append(text)
        return real(text)

    real = language.langdetect_language
    monkeypatch.setattr(language, "langdetect_language", counting)
    assert [detect_language(t) for t in CLEAR.values()] == ["en", "de", "en"]
    assert calls == []
    assert {n: detect_language(t) for n, t in UNCLEAR.items()} == expected
    assert len(calls) == len(UNCLEAR)


def test_short_text_is_not_judged() -> None:
    assert detect_language(ENGLISH[: language.MIN_LANG_CHARS - 1]) is None


def test_function_word_lists_share_no_word() -> None:
    seen: dict[str, str] = {}
    for lang, words in FUNCTION_WORDS.items():
        assert words, lang
        for word in words:
            assert word not in seen, f"{word!r} in {seen.get(word)} and {lang}"
            seen[word] = lang
    assert {"the", "which", "und", "nicht"} <= seen.keys()
    assert not {"de", "la", "die", "in", "was", "a"} & seen.keys()  # shared: evidence for none
