"""De-identification: identifiers are masked, clinical numbers are not, patterns are configurable.

The crafted inputs of issue 15 (names, addresses, dates of birth, WeChat/QQ, 医保卡号 and record-number forms,
full-width text, spaced ID numbers, landlines, dotted mobiles, lower-case passports, C-prefixed permits) each
have a case below; the clinical list at the end must come out byte-for-byte unchanged.
"""

from __future__ import annotations

import logging

import pytest

from reward.deid import DEFAULT_PATTERNS, Deidentifier


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier()


# --- phones -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["13812345678", "+86 138 1234 5678", "+86-13812345678", "008613812345678", "138-1234-5678"],
)
def test_mobile_numbers_with_prefix_and_separators_are_masked(deid, text):
    assert deid.mask(f"家长电话{text}，请回电") == "家长电话[电话]，请回电"


@pytest.mark.parametrize(
    "text",
    ["138.0013.8000", "138–0013–8000", "138—0013—8000", "138‐0013‐8000", "+86 138.0013.8000", "138 - 0013 - 8000"],
)
def test_mobiles_with_dots_or_non_ascii_dashes_are_masked(deid, text):
    assert deid.mask(f"家长电话{text}，请回电") == "家长电话[电话]，请回电"


@pytest.mark.parametrize("text", ["010-12345678", "0755-8765432", "(021)12345678", "075587654321"])
def test_landlines_are_masked(deid, text):
    assert deid.mask(f"座机：{text}。") == "座机：[电话]。"


@pytest.mark.parametrize("text", ["010 1234 5678", "(010)1234-5678", "0755-8765-4321", "+86-10-12345678"])
def test_landlines_in_spaced_bracketed_and_international_forms_are_masked(deid, text):
    assert deid.mask(f"座机：{text}。") == "座机：[电话]。"


# --- full-width text (NFKC) ---------------------------------------------------------------------------------


def test_full_width_digits_are_masked_and_the_text_around_them_keeps_its_original_characters(deid):
    # The match runs on NFKC-normalised text; what is not masked is returned as written (，：℃ stay full-width).
    assert deid.mask("体温38.5℃，家长电话：１３８００１３８０００，谢谢") == "体温38.5℃，家长电话：[电话]，谢谢"


@pytest.mark.parametrize("text", ["zhang＠example.com", "ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ"])
def test_an_email_with_a_full_width_at_sign_is_masked(deid, text):
    assert deid.mask(f"邮箱{text}。") == "邮箱[邮箱]。"


# --- ID cards, passports and permits ------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["11010519491231002X", "110105194912310021", "44030420180229123x"])
def test_id_card_numbers_including_x_check_digit_are_masked(deid, number):
    assert deid.mask(f"孩子身份证号{number}，") == "孩子身份证号[身份证号]，"


@pytest.mark.parametrize(
    "number", ["110105 19491231 002X", "1101 0519 4912 3100 2X", "110105-19491231-0021", "１１０１０５１９４９１２３１００２Ｘ"]
)
def test_id_card_numbers_with_spaces_dashes_or_full_width_digits_leave_no_digit(deid, number):
    assert deid.mask(f"孩子身份证号 {number}，") == "孩子身份证号 [身份证号]，"


def test_eighteen_digits_without_a_plausible_birth_date_are_not_taken_for_an_id_card(deid):
    assert "[身份证号]" not in deid.mask("编号110105999913310021")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("护照号e12345678，", "护照号[证件号]，"),
        ("港澳通行证C12345678，", "港澳通行证[证件号]，"),
        ("港澳通行证ca1234567，", "港澳通行证[证件号]，"),
        ("台湾通行证T12345678，", "台湾通行证[证件号]，"),
    ],
)
def test_lower_case_passports_and_c_prefixed_permits_are_masked(deid, text, expected):
    assert deid.mask(text) == expected


# --- e-mail, IP, messengers ---------------------------------------------------------------------------------


def test_emails_are_masked_whole_even_when_they_contain_a_phone_number(deid):
    assert deid.mask("联系 13812345678@qq.com 或 zhang.san+kid@example.com.cn") == "联系 [邮箱] 或 [邮箱]"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("微信号：wxid_abc123def456，", "微信号：[微信号]，"),
        ("加我微信 zhang_san-88 吧", "加我微信 [微信号] 吧"),
        ("vx: Liu-Mama2019，", "vx: [微信号]，"),
        ("wxid_k2j3h4g5f6 是孩子爸爸", "[微信号] 是孩子爸爸"),
    ],
)
def test_wechat_ids_are_masked(deid, text, expected):
    assert deid.mask(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("QQ号12345678，", "QQ号[QQ号]，"), ("qq：987654321。", "qq：[QQ号]。"), ("ＱＱ号码 10001", "ＱＱ号码 [QQ号]")],
)
def test_qq_numbers_are_masked(deid, text, expected):
    assert deid.mask(text) == expected


# --- record numbers -----------------------------------------------------------------------------------------


def test_passport_ip_and_labelled_record_numbers_are_masked(deid):
    masked = deid.mask("护照E12345678，IP 192.168.1.10，住院号：A1234567")
    assert masked == "护照[证件号]，IP [IP地址]，住院号：[病历号]"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("住院号码：20230012，", "住院号码：[病历号]，"),
        ("住院号是ZY2023001，", "住院号是[病历号]，"),
        ("住院号为 12345678。", "住院号为 [病历号]。"),
        ("病历编号：BL-2023-0456，", "病历编号：[病历号]，"),
        ("就诊卡号 1234 5678 9012，请核对", "就诊卡号 [病历号]，请核对"),
        ("门诊号 0012 3456 体温38.5℃", "门诊号 [病历号] 体温38.5℃"),
    ],
)
def test_record_numbers_in_every_labelled_form_leave_no_digit(deid, text, expected):
    assert deid.mask(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("医保卡号：A1234 5678 9012，", "医保卡号：[医保卡号]，"),
        ("医保卡号是 3301 0020 1900 12。", "医保卡号是 [医保卡号]。"),
        ("出生医学证明编号 O440123456，", "出生医学证明编号 [证件号]，"),
    ],
)
def test_health_insurance_and_birth_certificate_numbers_are_masked(deid, text, expected):
    assert deid.mask(text) == expected


def test_a_full_width_record_number_is_masked_and_its_label_kept_as_written(deid):
    assert deid.mask("住院号：Ａ１２３４５６７，") == "住院号：[病历号]，"


def test_a_record_number_does_not_swallow_the_clinical_numbers_after_it(deid):
    assert deid.mask("住院号123456 15mg/kg 3天") == "住院号[病历号] 15mg/kg 3天"


# --- dates of birth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("出生日期2019年3月5日，", "出生日期[出生日期]，"),
        ("出生于20190305，", "出生于[出生日期]，"),
        ("出生日期：2019-03-05。", "出生日期：[出生日期]。"),
        ("孩子出生年月：2019年3月，", "孩子出生年月：[出生日期]，"),
        ("生日是3月5号，", "生日是[出生日期]，"),
        ("孩子生于2019/3/5，", "孩子生于[出生日期]，"),
        ("出生日期：二〇一九年三月五日", "出生日期：[出生日期]"),
    ],
)
def test_dates_of_birth_after_a_birth_cue_are_masked(deid, text, expected):
    assert deid.mask(text) == expected


# --- names --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("患儿张小明，男，3岁。", "患儿[姓名]，男，3岁。"),
        ("我儿子李浩今年5岁", "我儿子[姓名]今年5岁"),
        ("我女儿叫王欣怡，咳嗽一周", "我女儿叫[姓名]，咳嗽一周"),
        ("宝宝刘子涵昨天开始拉肚子", "宝宝[姓名]昨天开始拉肚子"),
        ("患儿张明发烧3天", "患儿[姓名]发烧3天"),
        ("患儿姓名：欧阳娜娜", "患儿姓名：[姓名]"),
        ("孩子名叫陈一诺，", "孩子名叫[姓名]，"),
        ("家长张先生来电", "家长[姓名]先生来电"),
        ("王女士，您好", "[姓名]女士，您好"),
        ("患者：赵雨桐 性别：女", "患者：[姓名] 性别：女"),
        ("孩子叫于小明", "孩子叫[姓名]"),  # 于 is taken as a surname only after a naming cue (叫/姓名/名字)
    ],
)
def test_names_after_a_kinship_or_role_cue_are_masked(deid, text, expected):
    assert deid.mask(text) == expected


# --- addresses ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("家住广东省深圳市南山区科技园路1号3栋201室，", "家住[地址]，"),
        ("地址：北京市海淀区中关村大街27号", "地址：[地址]"),
        ("我们住在深圳市南山区，离医院近", "我们住在[地址]，离医院近"),
        ("上海市浦东新区张江镇", "[地址]"),
        ("广东深圳南山区科技园路1号", "[地址]"),
        ("邮寄到杭州市西湖区文三路 88号 5幢 3单元 502室。", "邮寄到[地址]。"),
        ("住在广州市从化区", "住在[地址]"),
        ("新疆维吾尔自治区乌鲁木齐市天山区", "[地址]"),
        ("我家在成都市武侯区人民南路四段", "我家在[地址]"),
    ],
)
def test_addresses_are_masked_whole(deid, text, expected):
    assert deid.mask(text) == expected


def test_an_address_leaves_the_clinical_number_after_it(deid):
    assert deid.mask("住在南山区 3天了，家住3栋201，体温39度") == "住在[地址] 3天了，家住[地址]，体温39度"


# --- what must stay ------------------------------------------------------------------------------------------

CLINICAL = [
    # doses, routes, frequencies
    "布洛芬混悬液每次5ml，对乙酰氨基酚500mg，每4-6小时一次",
    "布洛芬5ml每6小时一次",
    "一天喝水1000毫升，阿莫西林每日40-90mg/kg，分2-3次",
    "头孢克洛 20mg/kg/d，分3次口服，疗程7-10天",
    "口服补液盐III 50-100ml/kg，4小时内喝完",
    "雾化：布地奈德1mg + 特布他林2.5mg，bid",
    "维生素D 400IU/天，铁剂2mg/kg/d",
    # vital signs, growth
    "体温38.5℃，最高39.2度",
    "孩子3岁2个月，体重12.5kg，身高95cm",
    "体重12kg，头围46cm",
    "血压90/60mmHg，心率120次/分，呼吸30次/分，SpO2 96%",
    "患儿体温39度",
    # labs
    "2023-05-01就诊，血常规白细胞12.3×10^9/L，CRP 15mg/L",
    "血常规白细胞12.5×10^9/L，中性粒细胞78%，血小板320×10^9/L",
    "WBC 13.2 14.5 15.1 16.0，逐日上升",
    "血钠135mmol/L，血钾4.1mmol/L",
    "PCT 0.05ng/ml，ESR 25mm/h",
    # dates, ages, durations (no birth cue: clinical timeline, not identity)
    "血压90/60mmHg，心率120次/分，2024年3月12日复查",
    "3月5日开始发烧，3月7日出皮疹",
    "参照2019年指南，2021版共识",
    "出生后3天出现黄疸，出生体重3.2kg",
    "孕38周出生，出生时Apgar评分9分",
    "生后42天体检正常",
    "服药时间：08:00、14:00、20:00",
    # danger signs and symptom sentences that start with a name cue
    "宝宝发烧三天了",
    "孩子叫不醒，嗜睡",
    "宝宝黄疸值15mg/dl",
    "患儿高热惊厥一次",
    "宝宝高烧39度不退",
    "患儿严重脱水，尿少",
    "宝宝周岁了，还不会走",
    "宝宝马上就满月了",
    "孩子牛奶过敏",
    "孩子左耳流脓",
    "宝宝白天咳嗽少，晚上多",
    "患儿明显好转",
    "宝宝平时吃奶好",
    "患儿全身皮疹",
    "宝宝曾经抽搐过",
    "宝宝包皮红肿",
    "患儿苏醒后哭闹",
    "宝宝黄黄的",
    "孩子走路不稳",
    "孩子叫了一晚上",
    "患者于3天前出现咳嗽",
    "宝宝张嘴困难",
    # anatomy and hospital words that contain address suffixes
    "心前区可闻及杂音，左心室增大，室间隔缺损",
    "肝区叩痛，右下腹压痛",
    "加用镇静药，镇咳药可暂停",
    "去县医院还是市医院有区别吗",
    "病房在3楼，第2床",
    # regions stay: they matter for outbreaks and identify no one
    "广东地区手足口病高发，广东省深圳市本周病例增多",
    # pediatric signs whose first character is a surname, and adverb-like surnames after 患儿/孩子
    "孩子杨梅舌，口唇皲裂",
    "宝宝马牙需要挑破吗",
    "宝宝方颅，枕秃，考虑佝偻病",
    "患儿于入院前3天发热",
    "孩子易出汗，常哭闹",
    "患者陈述病史不清",
    "女儿周期性发热",
    # compatibility characters that NFKC would rewrite are returned as written
    "体重12㎏，体温38.5℃，第①次发作",
]


@pytest.mark.parametrize("text", CLINICAL)
def test_clinical_text_is_untouched(deid, text):
    assert deid.mask(text) == text


def test_the_clinical_list_is_long_enough_to_mean_something():
    assert len(CLINICAL) >= 45


def test_masked_text_is_stable_when_masked_again(deid):
    # W&B tables run every stage judge's Deidentifier in turn: placeholders must not be masked a second time.
    text = ("患儿姓名：张小明，出生日期2019年3月5日，家住广东省深圳市南山区科技园路1号3栋201室，电话13800138000，"
            "住院号：A1234567，医保卡号 1234 5678，QQ号12345678，微信号：wxid_abc123def456，地址：北京市海淀区")
    once = deid.mask(text)
    assert once == ("患儿姓名：[姓名]，出生日期[出生日期]，家住[地址]，电话[电话]，住院号：[病历号]，医保卡号 [医保卡号]，"
                    "QQ号[QQ号]，微信号：[微信号]，地址：[地址]")
    assert deid.mask(once) == once


def test_a_match_inside_a_character_that_nfkc_expands_masks_the_whole_character():
    # "ﬁ" is one character that NFKC turns into "fi": a match starting at its "i" may not leave half of it.
    assert Deidentifier({"i_word": r"i\w+"}).mask("见ﬁle。") == "见[i_word]。"


# --- configuration ------------------------------------------------------------------------------------------


def test_custom_pattern_adds_a_placeholder_by_name():
    deid = Deidentifier({"学号": r"(?<=学号:)\d{6,10}"})
    assert deid.mask("学号：20190123 电话13812345678") == "学号：[学号] 电话[电话]"


def test_custom_pattern_overrides_a_default_and_empty_string_disables_one():
    deid = Deidentifier({"mobile": r"1\d{10}", "email": ""})
    assert deid.mask("13812345678 a@b.cn") == "[电话] a@b.cn"
    assert "email" not in deid.pattern_names


def test_invalid_custom_pattern_fails_clearly():
    with pytest.raises(ValueError, match="bad"):
        Deidentifier({"bad": "("})


def test_a_custom_pattern_written_with_full_width_characters_warns_that_it_may_never_match(caplog):
    with caplog.at_level(logging.WARNING, logger="reward.deid"):
        Deidentifier({"学号": r"学号：\d+"})
    assert "学号" in caplog.text and "NFKC" in caplog.text


def test_disabled_deidentifier_returns_text_unchanged():
    assert Deidentifier(enabled=False).mask("13812345678") == "13812345678"


def test_disabled_deidentifier_warns_loudly_once_and_says_so_in_describe(caplog):
    with caplog.at_level(logging.WARNING, logger="reward.deid"):
        deid = Deidentifier(enabled=False)
        deid.mask("13812345678")
        deid.mask_messages([{"role": "user", "content": "13812345678"}])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "DISABLED" in warnings[0].getMessage()
    assert deid.describe()["enabled"] is False


def test_dropping_builtin_patterns_warns_and_is_described(caplog):
    with caplog.at_level(logging.WARNING, logger="reward.deid"):
        deid = Deidentifier({"name": "", "address": "", "mobile": r"1\d{10}"})
    assert "name" in caplog.text and "address" in caplog.text
    info = deid.describe()
    assert info["builtin_patterns_dropped"] == ["name", "address"]
    assert info["builtin_patterns_overridden"] == ["mobile"]
    assert info["names"] is False and info["addresses"] is False


def test_an_empty_pattern_set_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="reward.deid"):
        deid = Deidentifier({name: "" for name in DEFAULT_PATTERNS})
    assert "no patterns" in caplog.text
    assert deid.pattern_names == [] and deid.mask("13812345678") == "13812345678"


def test_the_default_deidentifier_is_silent_and_describes_every_builtin(caplog):
    with caplog.at_level(logging.WARNING, logger="reward.deid"):
        info = Deidentifier().describe()
    assert not caplog.records
    assert info == {
        "enabled": True,
        "normalization": "NFKC",
        "patterns": list(DEFAULT_PATTERNS),
        "builtin_patterns_dropped": [],
        "builtin_patterns_overridden": [],
        "custom_patterns": [],
        "names": True,
        "addresses": True,
    }


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
