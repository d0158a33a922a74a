"""De-identification: identifiers are masked, clinical numbers are not, patterns are configurable."""

from __future__ import annotations

import pytest

from reward.deid import Deidentifier


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier()


@pytest.mark.parametrize(
    "text",
    ["13812345678", "+86 138 1234 5678", "+86-13812345678", "008613812345678", "138-1234-5678"],
)
def test_mobile_numbers_with_prefix_and_separators_are_masked(deid, text):
    assert deid.mask(f"家长电话{text}，请回电") == "家长电话[电话]，请回电"


@pytest.mark.parametrize("text", ["010-12345678", "0755-8765432", "(021)12345678", "075587654321"])
def test_landlines_are_masked(deid, text):
    assert deid.mask(f"座机：{text}。") == "座机：[电话]。"


@pytest.mark.parametrize("number", ["11010519491231002X", "110105194912310021", "44030420180229123x"])
def test_id_card_numbers_including_x_check_digit_are_masked(deid, number):
    assert deid.mask(f"孩子身份证号{number}，") == "孩子身份证号[身份证号]，"


def test_eighteen_digits_without_a_plausible_birth_date_are_not_taken_for_an_id_card(deid):
    assert "[身份证号]" not in deid.mask("编号110105999913310021")


def test_emails_are_masked_whole_even_when_they_contain_a_phone_number(deid):
    assert deid.mask("联系 13812345678@qq.com 或 zhang.san+kid@example.com.cn") == "联系 [邮箱] 或 [邮箱]"


def test_passport_ip_and_labelled_record_numbers_are_masked(deid):
    masked = deid.mask("护照E12345678，IP 192.168.1.10，住院号：A1234567")
    assert masked == "护照[证件号]，IP [IP地址]，住院号：[病历号]"


@pytest.mark.parametrize(
    "text",
    [
        "布洛芬混悬液每次5ml，对乙酰氨基酚500mg，每4-6小时一次",
        "体温38.5℃，最高39.2度",
        "孩子3岁2个月，体重12.5kg，身高95cm",
        "2023-05-01就诊，血常规白细胞12.3×10^9/L，CRP 15mg/L",
        "一天喝水1000毫升，阿莫西林每日40-90mg/kg，分2-3次",
        "血压90/60mmHg，心率120次/分，2024年3月12日复查",
    ],
)
def test_doses_temperatures_ages_weights_and_dates_are_untouched(deid, text):
    assert deid.mask(text) == text


def test_custom_pattern_adds_a_placeholder_by_name():
    deid = Deidentifier({"微信号": r"(?<=微信[:：])[A-Za-z][A-Za-z0-9_-]{5,19}"})
    assert deid.mask("微信：wx_abc123 电话13812345678") == "微信：[微信号] 电话[电话]"


def test_custom_pattern_overrides_a_default_and_empty_string_disables_one():
    deid = Deidentifier({"mobile": r"1\d{10}", "email": ""})
    assert deid.mask("13812345678 a@b.cn") == "[电话] a@b.cn"
    assert "email" not in deid.pattern_names


def test_invalid_custom_pattern_fails_clearly():
    with pytest.raises(ValueError, match="bad"):
        Deidentifier({"bad": "("})


def test_disabled_deidentifier_returns_text_unchanged():
    assert Deidentifier(enabled=False).mask("13812345678") == "13812345678"


def test_mask_messages_masks_content_and_keeps_roles_without_mutating_input(deid):
    messages = [
        {"role": "user", "content": "我的手机13812345678"},
        {"role": "assistant", "content": [{"type": "text", "text": "邮箱a@b.com"}]},
    ]
    masked = deid.mask_messages(messages)
    assert masked == [
        {"role": "user", "content": "我的手机[电话]"},
        {"role": "assistant", "content": [{"type": "text", "text": "邮箱[邮箱]"}]},
    ]
    assert messages[0]["content"] == "我的手机13812345678"
