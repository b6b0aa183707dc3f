"""Our tight copy of langdetect's Detector gives the stock Detector's probabilities to the last bit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.triage import language, mime, quotes
from bot.triage.phrases import languages

HERE = Path(__file__).parent


def texts() -> list[str]:
    """The new text of every reply in the corpora, and its opening as detect() hands it to langdetect."""
    found = []
    for path in sorted(HERE.glob("corpus*/*.eml")):
        text = quotes.split_message(mime.parse(path.read_bytes(), 10_000_000)).new_text
        found += [text, language._NOISE.sub(" ", language._opening(text))]
    return [t for t in found if t.strip()]


@pytest.mark.parametrize("codes", [tuple(sorted(languages())), ("en", "es"), ("de", "en", "fr")])
def test_same_probabilities_as_the_stock_detector(codes: tuple[str, ...]) -> None:
    factory = language._factory(codes)
    assert factory is not None
    checked = 0
    for text in texts():
        stock, ours = factory.create(), language._Detector(factory)
        stock.append(text)
        ours.append(text)
        try:
            expected = [(x.lang, x.prob) for x in stock.get_probabilities()]
        except language.LangDetectException:
            with pytest.raises(language.LangDetectException):
                ours.get_probabilities()
            continue
        assert [(x.lang, x.prob) for x in ours.get_probabilities()] == expected, text
        checked += 1
    assert checked > 500
