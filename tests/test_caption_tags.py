"""Tags of a caption set: comma pieces are tags only when the captions are tag lists.

The tiny demo showed why: with sentence captions behind a trigger word ("tok, a red lighthouse on
an island"), the "top tags" were whole captions, so evaluate's tag prompt ran three captions
together and the reports' word bars listed captions.
"""

from __future__ import annotations

from datatools.doctor import tag_style, word_frequency
from lora_factory.schemas import CaptionStats

SENTENCES = ["tok, a red lighthouse on a rocky island at dusk", "tok, a white lighthouse on a rocky island at dawn"]


def _stats(style: str, tag_frequency: dict[str, int]) -> CaptionStats:
    return CaptionStats(num_images=2, captioned=2, coverage=1.0, words_mean=9, words_median=9, words_max=9,
                        trigger_word="tok", caption_style=style, tag_frequency=tag_frequency,
                        tag_fields={"subject": {"lighthouse": 2, "island": 1},
                                    "keywords": {"rocky island": 2, "lighthouse": 1, "tok": 2},
                                    "style": {"moody": 2}})


def test_sentence_captions_take_their_tags_from_the_tagger_not_from_comma_pieces() -> None:
    stats = _stats("natural", {s.split(", ")[1]: 1 for s in SENTENCES})
    assert stats.concept_tags(3) == ["lighthouse", "rocky island", "island"]  # subject + keywords, trigger out


def test_tag_captions_keep_their_own_tags_most_frequent_first() -> None:
    stats = _stats("tags", {"red fox": 1, "snow": 3, "tok": 3, "forest": 3})
    assert stats.concept_tags(2) == ["forest", "snow"]  # ties by name, the trigger word is not a tag


def test_a_trigger_comma_does_not_make_sentences_tags() -> None:
    assert not tag_style(SENTENCES)
    assert tag_style(["tok, red fox, snow, forest", "tok, red fox, smile"])
    words = word_frequency(SENTENCES)
    assert words["lighthouse"] == 2 and words["rocky"] == 2
    assert not any("," in w or len(w.split()) > 1 for w in words)
    assert word_frequency(["tok, red fox, snow", "tok, red fox"]) == {"tok": 2, "red fox": 2, "snow": 1}
