"""Who counts as one approver: names the way people (and attackers) type them."""

from __future__ import annotations

from fedrisk.promotion import normalise_name


def test_lookalike_invisible_and_spacing_variants_are_one_person():
    same = ["Alice Smith", "alice  smith", " ALICE SMITH ", "ａｌｉｃｅ ｓｍｉｔｈ", "alice\u200b smith",
            "alice\u00a0smith", "Alice Smith\u200d"]
    assert {normalise_name(n) for n in same} == {"alice smith"}
    assert normalise_name("alice") != normalise_name("alicia")
    assert normalise_name("\u200b \u200d") == ""  # nothing but invisible characters: no name
