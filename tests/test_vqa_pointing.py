"""VQAv2 answer normalisation and accuracy, counting answers, Molmo / Molmo2 point formats and the
pointing metric (maximum matching of points to true masks)."""

import numpy as np
import pytest

from mmfm.errors import InvalidText
from mmfm.eval.vqa import max_matching, normalize_answer, parse_count, point_scores, vqa_accuracy
from mmfm.text.pointing import count_answer, format_points, format_points_v2, parse_points, parse_points_v2


@pytest.mark.parametrize("raw,norm", [
    ("Two", "2"), ("a dog.", "dog"), ("Yes!", "yes"), ("1,000", "1000"), ("the red-circle", "red circle"),
    ("dont", "don't"), ("3.5", "3.5"), ("  Blue\n", "blue"), ("none", "0"),
])
def test_vqa_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_accuracy_is_the_leave_one_out_average():
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", answers) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("3", answers) == 1.0
    assert vqa_accuracy("4", answers) == 0.0
    assert vqa_accuracy("A square.", ["square"]) == 1.0 and vqa_accuracy("circle", ["square"]) == 0.0


def test_counts_are_read_from_any_answer():
    pts = [(10, 10), (30, 40)]
    assert parse_count(count_answer(pts, 64, 64, "red circles")) == 2
    assert parse_count("three") == 3 and parse_count("There are 4.") == 4
    assert parse_count("There are none.") == 0 and parse_count("I cannot tell") is None
    # numbers inside point markup never count: only the stated total
    assert parse_count('<points x1="12.5" y1="3.0" x2="50.0" y2="7.0" alt="x">x</points>') is None


def test_molmo_points_round_trip_sorted_by_x_then_y():
    s = format_points([(32, 16), (8, 48), (8, 8)], 64, 64, "red circles")
    assert (
        s
        == '<points x1="12.5" y1="12.5" x2="12.5" y2="75.0" x3="50.0" y3="25.0" alt="red circles">red circles</points>'
    )
    assert parse_points(s, 64, 64) == [(8.0, 8.0), (8.0, 48.0), (32.0, 16.0)]
    one = format_points([(16, 16)], 64, 64, "a star")
    assert one.startswith('<point x="25.0" y="25.0"') and parse_points(one) == [(25.0, 25.0)]
    with pytest.raises(InvalidText):
        parse_points('<point x="120" y="3">a</point>')


def test_molmo2_points_with_image_indices():
    s = format_points_v2({1: [(10, 20), (5, 40)], 2: [(32, 32)]}, {1: (64, 64), 2: (64, 64)}, "dots")
    assert s == '<points coords="1 1 078 625 2 156 312; 2 1 500 500">dots</points>'
    got = parse_points_v2(s, {1: (64, 64), 2: (64, 64)})
    assert [g[0] for g in got] == [1, 1, 2] and got[2][1:] == (32.0, 32.0)
    assert parse_points_v2('<points coords="1 1 105 205 2 300 400">leather earmuff</points>') == [
        (1, 105.0, 205.0), (1, 300.0, 400.0)]
    for bad in ('<points coords="1 1 105">x</points>', '<points coords="1 1 1200 3">x</points>'):
        with pytest.raises(InvalidText):
            parse_points_v2(bad)
    with pytest.raises(InvalidText, match="image 3"):
        parse_points_v2('<points coords="3 1 100 100">x</points>', {1: (64, 64)})


def test_point_scores_match_points_to_masks_one_to_one():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :5, :5] = True
    masks[1, 5:, 5:] = True
    assert point_scores([(1, 1), (7, 7)], masks)["f1"] == 1.0
    two_in_one = point_scores([(1, 1), (2, 2)], masks)  # both points on object 0: one match
    assert (two_in_one["tp"], two_in_one["precision"], two_in_one["recall"]) == (1, 0.5, 0.5)
    assert point_scores([], masks)["f1"] == 0.0 and point_scores([], masks[:0])["f1"] == 1.0
    assert point_scores([(1, 1)], masks[:0])["precision"] == 0.0


def test_maximum_matching_equals_hungarian():
    scipy = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    for _ in range(200):
        ok = rng.random((rng.integers(1, 7), rng.integers(1, 7))) < 0.4
        r, c = scipy.linear_sum_assignment(-ok.astype(float))
        assert max_matching(ok) == int(ok[r, c].sum())
