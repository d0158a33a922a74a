"""QiZhen hit-rate criteria (methods.md §7): matching rules and the exact 1/2 and 2/3 boundaries."""

from __future__ import annotations

import pytest

from rlmed.eval.hitrate import criteria, hit_rates, hits, normalize

INDICATIONS = ["感冒", "发热", "头痛"]


def test_hits_counts_items_occurring_in_the_answer():
    assert hits("本品用于感冒引起的发热。", INDICATIONS) == 2  # 感冒 ✓ 发热 ✓ 头痛 ✗
    assert hits("本品用于关节炎。", INDICATIONS) == 0


def test_criteria_thresholds_on_three_items():
    # 0 of 3: nothing; 1 of 3: criterion 1 only (1·2 < 3); 2 of 3: 2·2 ≥ 3 and 2·3 ≥ 2·3 → all; 3 of 3: all
    assert criteria("用于关节炎", INDICATIONS) == (False, False, False)
    assert criteria("用于感冒", INDICATIONS) == (True, False, False)
    assert criteria("用于感冒、发热", INDICATIONS) == (True, True, True)
    assert criteria("用于感冒、发热、头痛", INDICATIONS) == (True, True, True)


def test_exactly_one_half_and_exactly_two_thirds_count():
    # 1 of 2 = exactly 1/2 → criterion 2 met; 1/2 < 2/3 → criterion 3 not met
    assert criteria("可用于感冒", ["感冒", "发热"]) == (True, True, False)
    # 2 of 3 = exactly 2/3 → criterion 3 met (a float 2/3 comparison could round this the wrong way)
    assert criteria("感冒和发热", INDICATIONS)[2] is True
    # 4 of 6 = 2/3 exactly → met; 3 of 6 = 1/2 → criterion 2 met, criterion 3 not (3·3 = 9 < 12)
    six = ["a1", "a2", "a3", "a4", "a5", "a6"]
    assert criteria("a1 a2 a3 a4", six) == (True, True, True)
    assert criteria("a1 a2 a3", six) == (True, True, False)
    # 2 of 5: 2·2 = 4 < 5 → criterion 2 not met
    assert criteria("a1 a2", six[:5]) == (True, False, False)


def test_one_item_all_criteria_equal_the_single_hit():
    assert criteria("治疗感冒", ["感冒"]) == (True, True, True)
    assert criteria("治疗咳嗽", ["感冒"]) == (False, False, False)


def test_duplicate_items_count_once():
    # ["感冒", "感冒", " 感冒 ", "发热"] is two distinct items; hitting 感冒 is 1 of 2, not 3 of 4
    items = ["感冒", "感冒", " 感冒 ", "发热"]
    assert hits("治疗感冒", items) == 1
    assert criteria("治疗感冒", items) == (True, True, False)


def test_item_inside_a_longer_item_is_not_hit_by_the_longer_mention():
    items = ["头痛", "偏头痛"]
    # "偏头痛" mentions one item; the 头痛 inside it is part of that mention → 1 of 2
    assert hits("用于偏头痛", items) == 1
    # a separate 头痛 elsewhere is a second mention → 2 of 2
    assert hits("用于偏头痛及紧张性头痛", items) == 2
    assert hits("用于头痛", items) == 1  # only the short item occurs
    # item order in the list does not matter
    assert hits("用于偏头痛", ["偏头痛", "头痛"]) == 1


def test_overlapping_items_that_do_not_contain_each_other_both_hit():
    # 流行性感冒 and 感冒发热 overlap on 感冒 in "流行性感冒发热" but neither lies inside the other
    assert hits("流行性感冒发热", ["流行性感冒", "感冒发热"]) == 2


def test_normalisation_spaces_full_width_and_case():
    assert normalize(" Ｈ１Ｎ１ 流 感\u3000") == "h1n1流感"
    assert hits("用于Ｈ１Ｎ１流感", ["h1n1 流感"]) == 1  # full-width digits/letters, case, inner space
    assert hits("用于 感 冒", ["  感冒  "]) == 1  # surrounding and inner spaces
    assert hits("治疗VITAMIN缺乏", ["Vitamin"]) == 1


def test_blank_items_are_ignored_and_an_empty_row_is_an_error():
    assert hits("治疗感冒", ["感冒", "  ", ""]) == 1
    assert criteria("治疗感冒", ["感冒", "  "]) == (True, True, True)  # n = 1 distinct real item
    assert hits("治疗感冒", []) == 0
    with pytest.raises(ValueError, match="no expected items"):
        criteria("治疗感冒", [])
    with pytest.raises(ValueError, match="row 1 has no expected items"):
        hit_rates(["治疗感冒", "治疗发热"], [["感冒"], [" "]])


def test_hit_rates_are_percent_of_rows():
    answers = ["用于感冒", "用于感冒、发热", "用于关节炎", "用于偏头痛"]
    items = [INDICATIONS, INDICATIONS, INDICATIONS, ["头痛", "偏头痛"]]
    # rows: (T,F,F), (T,T,T), (F,F,F), 1 of 2 → (T,T,F)
    # criterion 1: 3/4; criterion 2: 2/4; criterion 3: 1/4
    assert hit_rates(answers, items) == {"hit_rate_1": 75.0, "hit_rate_2": 50.0, "hit_rate_3": 25.0}


def test_hit_rates_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2 answers but 1 item lists"):
        hit_rates(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no rows"):
        hit_rates([], [])
    with pytest.raises(ValueError, match="not strings"):
        hit_rates(["感冒"], ["感冒"])  # a bare string row would be read as characters
