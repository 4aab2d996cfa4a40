"""The accuracy metric (CER, WER) against hand-computed cases, and ground-truth files."""

from __future__ import annotations

import math

import pytest

from tasks.errors import BadRequest
from tasks.evaluation.ground_truth import document_name, parse_ground_truth
from tasks.evaluation.scoring import Score, align_lines, normalize, score, score_pages, total


def test_substitution_insertion_deletion_counted_by_hand() -> None:
    # "kitten" -> "sitting": k->s, e->i, +g = 3 edits over 6 characters.
    one = score("kitten", "sitting")
    assert (one.char_edits, one.chars, one.cer) == (3, 6, 0.5)
    # words: "the cat sat" vs "the bat sat down": 1 substitution + 1 insertion over 3.
    two = score("the cat sat", "the bat sat down")
    assert (two.word_edits, two.words) == (2, 3)
    assert two.wer == pytest.approx(2 / 3)


def test_whitespace_runs_collapse_and_ends_strip() -> None:
    assert normalize("  a \t b\n\n c  ") == "a b c"
    assert score("a b c", "  a\n\nb   c ").char_edits == 0


def test_empty_hypothesis_reads_nothing_right() -> None:
    empty = score("abc de", "")
    assert (empty.cer, empty.wer, empty.chars, empty.words) == (1.0, 1.0, 6, 2)


def test_empty_ground_truth_is_zero_or_infinite() -> None:
    assert score("", "  ").cer == 0.0
    assert score(" \n", "").wer == 0.0
    read = score("", "ghost")
    assert math.isinf(read.cer) and read.char_edits == 5
    assert read.to_json()["cer"] is None  # JSON has no infinity
    # a total still counts the blank page's inserted characters
    assert total([score("abcd", "abcd"), read]).cer == 5 / 4


def test_combining_characters_equal_their_composed_form() -> None:
    decomposed, composed = "caf" + "e\u0301", "caf\u00e9"
    assert decomposed != composed
    assert score(decomposed, composed).char_edits == 0
    assert score(composed, decomposed).chars == 4
    # a wrong accent is one character wrong, not two
    assert score("caf\u00e9", "cafe\u0300").char_edits == 1


def test_cjk_without_spaces_counts_each_character_as_a_word() -> None:
    truth, read = "我们的文字", "我们文学"
    one = score(truth, read)
    assert (one.chars, one.char_edits) == (5, 2)   # 的 deleted, 字 -> 学
    assert (one.words, one.word_edits) == (5, 2)
    # mixed: Latin words stay words, each Han character is one
    assert score("OCR 识别 test", "OCR 识别 test").words == 4


def test_ignore_case_and_punctuation() -> None:
    assert score("Hello, World!", "hello world").char_edits == 4
    assert score("Hello, World!", "hello world", ignore_case=True).char_edits == 2
    both = score("Hello, World!", "hello world", ignore_case=True,
                 ignore_punctuation=True)
    assert (both.char_edits, both.chars, both.word_edits) == (0, 11, 0)
    assert score("STRASSE", "straße", ignore_case=True).char_edits == 0  # casefold


def test_totals_add_edits_and_lengths() -> None:
    pages = score_pages(["abcd", "xy"], ["abcd", "zz"])
    assert [p.char_edits for p in pages] == [0, 2]
    assert total(pages) == Score(2, 6, 1, 2)
    assert total(pages).cer == pytest.approx(1 / 3)
    # page counts that disagree: the joined texts, once
    assert len(score_pages(["a", "b"], ["a b"])) == 1


def test_alignment_marks_edits_per_line_and_adds_up() -> None:
    truth = "the first line\nsecond line here\nthird"
    read = "the frst line\nsecond lime heres\nthird"
    lines = align_lines(truth, read)
    assert [line.chars for line in lines] == [14, 16, 5]
    assert [line.edits for line in lines] == [1, 2, 0]
    first = lines[0].pieces
    assert ("delete", "i", "") in first and first[0] == ("equal", "the f", "the f")
    second = lines[1].pieces
    assert ("replace", "n", "m") in second and second[-1] == ("insert", "", "s")
    assert sum(line.edits for line in lines) == score(truth, read).char_edits


def test_plain_ground_truth_pages_split_by_form_feed() -> None:
    assert parse_ground_truth("a.gt.txt", b"one\ftwo\n") == ["one", "two\n"]
    assert document_name("scan.page.pdf") == "scan.page"
    with pytest.raises(BadRequest):
        parse_ground_truth("a.gt.txt", b"\xff\xfe\x00bad")


PAGE_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15">
 <Page imageFilename="a.png" imageWidth="10" imageHeight="10">
  <TextRegion id="r1">
   <TextLine id="l1"><TextEquiv index="2"><Unicode>wrong</Unicode></TextEquiv>
    <TextEquiv index="1"><Unicode>Erste Zeile</Unicode></TextEquiv></TextLine>
   <TextLine id="l2"><TextEquiv><Unicode>zweite</Unicode></TextEquiv></TextLine>
   <TextEquiv><Unicode>Erste Zeile zweite</Unicode></TextEquiv>
  </TextRegion>
 </Page>
</PcGts>"""

ALTO = b"""<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#"><Layout>
 <Page ID="p1"><PrintSpace><TextBlock><TextLine>
  <String CONTENT="Hello"/><SP/><String CONTENT="wor"/><HYP CONTENT="-"/></TextLine>
  <TextLine><String CONTENT="ld"/></TextLine></TextBlock></PrintSpace></Page>
 <Page ID="p2"><PrintSpace><TextBlock><TextLine><String CONTENT="two"/></TextLine>
 </TextBlock></PrintSpace></Page></Layout></alto>"""


def test_page_xml_and_alto_ground_truth() -> None:
    assert parse_ground_truth("a.gt.xml", PAGE_XML) == ["Erste Zeile\nzweite"]
    assert parse_ground_truth("a.gt.xml", ALTO) == ["Hello wor -\nld", "two"]
    no_namespace = PAGE_XML.replace(b' xmlns="http://schema.primaresearch.org/PAGE/gts/'
                                    b'pagecontent/2019-07-15"', b"")
    assert parse_ground_truth("a.gt.xml", no_namespace) == ["Erste Zeile\nzweite"]
    for bad in (b"<html><body/></html>", b"<PcGts><Page>"):
        with pytest.raises(BadRequest):
            parse_ground_truth("a.gt.xml", bad)
