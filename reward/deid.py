"""De-identification of Chinese medical dialogue text before it leaves the machine.

Patient dialogues carry names, addresses, dates of birth, phone numbers, ID-card, passport and permit numbers,
messenger ids, e-mail addresses and record numbers. Anything sent to a hosted judge must have them masked first.

Shape, and why:
- Matching runs on NFKC-normalised text (full-width １３８ and ＠ become 138 and @), but the output keeps every
  character that was not masked exactly as written: a judge must see "38.5℃" and "，", not "38.5°C" and ",".
- Numbers are anchored (digit boundaries, fixed group lengths, a plausible birth date inside ID numbers, a
  label before record numbers) so that doses, temperatures, ages, weights, lab values and illness-onset dates
  stay: masking those would destroy exactly the content a judge must see.
- Names and addresses have no fixed shape, so they are found from the usual Chinese forms only: a cue
  (患儿/我儿子/叫/姓名/先生…) before a common surname, and an address chain (province…district…road…number…
  room). Clinical words that start with a surname character (黄疸, 高烧, 周岁…) are listed and never taken
  for names. docs/patient_data.md lists precisely what is and is not masked.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from typing import Any, Callable, Iterable

logger = logging.getLogger(__name__)


def _cjk_except(excluded: str) -> str:
    """A character class of the CJK unified ideographs (U+4E00-U+9FFF) minus `excluded`, as plain ranges: one
    class test per character, where a lookahead per character made the name and address scans several times
    slower."""
    ranges, start = [], 0x4E00
    for code in sorted({ord(c) for c in excluded if 0x4E00 <= ord(c) <= 0x9FFF}):
        if code > start:
            ranges.append((start, code - 1))
        start = code + 1
    if start <= 0x9FFF:
        ranges.append((start, 0x9FFF))
    return "[" + "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges) + "]"


# --- numbers ---------------------------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# One optional separator between digit groups: space, ASCII/Unicode dashes and minus, dot or middle dot (NFKC
# has already turned full-width ones into ASCII; it leaves ‐ ‒ – — ― − alone, so they are listed).
_DASHES = "\\-\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_PHONE_SEP = rf"(?:[ \t]*[{_DASHES}.\u00b7][ \t]*|[ \t]+)?"
_ID_SEP = rf"[ {_DASHES}]?"
# ID card: 6-digit region, birth date (18xx-20xx, month 01-12, day 01-31), 3-digit sequence, check digit or X;
# a separator may sit between any two digits ("110105 19491231 002X", "1101 0519 4912 3100 2X").
_S = _ID_SEP
_ID_CARD = (
    rf"(?<![0-9A-Za-z])[1-9](?:{_S}\d){{5}}{_S}(?:1{_S}[89]|2{_S}0){_S}\d{_S}\d"
    rf"{_S}(?:0{_S}[1-9]|1{_S}[0-2]){_S}(?:0{_S}[1-9]|[12]{_S}\d|3{_S}[01])"
    rf"{_S}\d{_S}\d{_S}\d{_S}[0-9Xx](?![0-9A-Za-z])"
)
# Area codes: 010, 02x, then 0 + three digits starting 3-9. After +86 the leading 0 is dropped.
_AREA = r"(?:10|2\d|[3-9]\d{2})"
_LANDLINE = (
    rf"(?<![\d+])(?:(?:\+|00)86{_PHONE_SEP}\(?0?{_AREA}\)?|\(0{_AREA}\)|0{_AREA})"
    rf"{_PHONE_SEP}\d{{3,4}}{_PHONE_SEP}\d{{4}}(?!\d)"
)
# Mobile: 1[3-9]x + 8 digits in the written 3-4-4 grouping only. Arbitrary separators would let a row of lab
# values ("13.2 14.5 15.1 16.0") read as a phone number.
_MOBILE = (
    rf"(?<![\d+])(?:(?:\+|00)?86{_PHONE_SEP}|\(\+?86\){_PHONE_SEP})?"
    rf"1[3-9]\d{_PHONE_SEP}\d{{4}}{_PHONE_SEP}\d{{4}}(?!\d)"
)
# A labelled number: a first group of 2+ characters ("ZY 2023 0001"), then further space-separated digit groups
# ("1234 5678 9012") unless a group is followed by a unit ("住院号123456 15mg"): clinical numbers after it survive.
_LABEL_GLUE = r"(?:[:\s]|是|为)*"
_UNIT_NEXT = r"[A-Za-z%.\d天岁月年日周次个小分秒度斤克毫号楼层]"  # what follows a clinical number, not an identifier
_LABELLED_VALUE = rf"(?P<value>[A-Za-z0-9][A-Za-z0-9\-]+(?:[ ]\d{{2,}}(?!{_UNIT_NEXT}))*)"

# --- dates of birth --------------------------------------------------------------------------------------------
_CN_DIGIT = "〇零一二三四五六七八九十"
_BIRTH_CUE = r"(?:出生日期|出生年月日?|出生时间|出生于|出生在|出生|生日|生于|(?i:DOB|D\.O\.B\.?))"
_DATE_OF_BIRTH = (
    rf"{_BIRTH_CUE}[:\s是为在于]*(?P<value>"
    r"(?:18|19|20)\d{2}\s*年\s*\d{1,2}\s*月(?:\s*\d{1,2}\s*[日号])?"  # 2019年3月5日, 2019年3月
    r"|(?:18|19|20)\d{2}[-/.]\d{1,2}(?:[-/.]\d{1,2})?(?![\d.])"  # 2019-03-05, 2019/3/5
    r"|(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)"  # 20190305
    r"|\d{1,2}\s*月\s*\d{1,2}\s*[日号]"  # 生日是3月5号
    rf"|[{_CN_DIGIT}]{{4}}年[{_CN_DIGIT}]{{1,2}}月(?:[{_CN_DIGIT}]{{1,3}}[日号])?"  # 二〇一九年三月五日
    r")"
)

# --- names -----------------------------------------------------------------------------------------------------
# The ~100 most common single-character surnames (together about 85% of the population) and compound ones.
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩邓冯曹彭曾肖田董潘袁蔡蒋余于杜叶程魏苏吕丁任卢姚沈"
    "钟姜崔谭陆范汪廖石金韦贾夏付傅方邹熊白孟秦邱侯江尹薛闫段雷龙黎史陶贺毛郝顾龚邵万覃武钱戴严莫孔向常汤康易乔"
)
# Surnames that are also everyday adverbs or prepositions ("患儿于入院前", "宝宝常出汗", "孩子易激惹"): taken only
# after an explicit naming cue (叫/姓名/名字), never right after 患儿/宝宝.
_ADVERB_SURNAMES = "于曾常向易任余万"
_COMPOUND_SURNAMES = "欧阳|上官|司马|诸葛|东方|皇甫|尉迟|公孙|慕容|令狐|夏侯|长孙|宇文|司徒|西门|南宫|端木|独孤|轩辕|呼延"
# Words that begin with a surname character and follow 宝宝/患儿/孩子 in clinical text (symptoms, signs, drugs,
# foods, time words): never a name.
_NOT_NAMES = (
    "黄疸|黄色|黄绿|黄痰|黄鼻|黄白|黄芪|黄连|黄芩|黄豆|黄瓜|黄油|高烧|高热|高温|高峰|高度|高血|高于|高达|高危|高低"
    "|高钙|高蛋|周岁|周身|周围|周末|周期|周[一二三四五六日天]|马上|马桶|马牙|马蹄|马齿|康复|包皮|苏醒|苏打|许多|许久"
    "|何时|何种|夏天|夏季|夏令|胡言|胡话|胡萝|胡说|金黄|金霉|金银|金针|罗红|谢谢|张嘴|张口|张开|杨梅|刘海|陈述|陈皮"
    "|叶酸|叶子|程度|程序|钟头|姜汤|姜水|姜黄|陆续|范围|石膏|石头|石斛|石榴|方便|方法|方面|方式|方颅|白天|白色|白细"
    "|白斑|白点|白苔|白膜|白日|白芍|白术|白芷|白粥|白开|白水|白米|白糖|白菜|黎明|毛病|毛发|毛囊|毛巾|毛细|戴口|戴着"
    "|戴眼|戴帽|戴上|严重|严格|莫名|汤药|汤水|付费|江湖|雷雨|龙胆|龙骨|龙眼|孟鲁|杜鹃|杜冷|段时|顾不|孔径|王者|田七"
)
# Characters that do not occur in given names but do right after one ("张明发烧", "李浩今年5岁", "魏氏评分").
_NAME_STOP = (
    "的了在是住于到去来从和与及或我你他她它们这那有也都就还又很把被让给对为以而但说叫今昨刚已每次岁个氏"
    "〇零二三四五六七八九十两几发烧热咳嗽吐泻拉疼痛痒肿哭闹吃喝睡醒便尿流出现得患因最近总经满半"
)
# Two-character words that start right after a name ("李浩一直发烧", "王浩大便干", "张先生").
_AFTER_NAME = (
    "一直|一天|一周|一个|一岁|一次|一般|一会|一下|一起|一点|一晚|一夜|天天|明天|明显|小时|大便|大概|大约|上午|上周"
    "|上次|下午|下周|中午|晚上|早上|白天|平时|正常|先生|女士|小姐|太太|阿姨|妈妈|爸爸|医生|老师"
)
_NAME_CHAR = rf"(?:(?!{_AFTER_NAME}){_cjk_except(_NAME_STOP)})"
_GIVEN = rf"{_NAME_CHAR}{_NAME_CHAR}?"


def _not_a_name(group: str) -> str:
    """Lookaheads rejecting a listed word and a doubled character ("宝宝黄黄的"); `group` names the backreference."""
    return rf"(?!{_NOT_NAMES})(?!(?P<{group}>.)(?P={group}))"


_KIN_CUE = (  # words that a name often follows directly ("患儿张小明"), but that clinical text follows far more
    r"(?:患儿|患者|病人|病儿|儿子|女儿|闺女|宝宝|宝贝|孩子|小孩|孙子|孙女|外孙|家长|父亲|母亲|爸爸|妈妈)"
)
_NAMING_CUE = r"(?:姓名|名字|名叫|叫做|叫)"  # words that announce a name ("叫王欣怡", "姓名：欧阳娜娜")
_SURNAME = rf"(?:{_COMPOUND_SURNAMES}|[{_SURNAMES}])"
_PLAIN_SURNAME = rf"(?:{_COMPOUND_SURNAMES}|[{''.join(c for c in _SURNAMES if c not in _ADVERB_SURNAMES)}])"
_NAME = (
    rf"{_KIN_CUE}[:\s]*(?P<value>{_not_a_name('d1')}{_PLAIN_SURNAME}{_GIVEN})"
    rf"|{_NAMING_CUE}[:\s]*(?:是|为)?[:\s]*(?P<named>{_not_a_name('d2')}{_SURNAME}{_GIVEN})"
    # A surname before an honorific (王女士, 张先生) is a name without any cue; only the surname is masked.
    rf"|(?P<surname>{_SURNAME})(?=先生|女士|小姐|太太)"
)

# --- addresses -------------------------------------------------------------------------------------------------
# Characters never inside a place name, and function words that may be inside one (成都, 和平区, 从化区) but
# never start an address: they keep "我们在深圳市…" from taking "在" into the mask.
_PLACE_STOP = "的了是我你他她它们这那也就还又很把被让给但说叫今昨刚已每岁在住到去与及或对为以而次"
_PLACE_NO_START = "于都和从来有个家"
_P = _cjk_except(_PLACE_STOP)  # one character of a place name
_PROVINCE = (
    r"(?:(?:北京|天津|上海|重庆)市?|(?:河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|海南"
    r"|四川|贵州|云南|陕西|甘肃|青海|台湾)省?|(?:内蒙古|广西|西藏|宁夏|新疆)(?:壮族|回族|维吾尔)?(?:自治区)?"
    r"|(?:香港|澳门)(?:特别行政区)?)"
)
_ADDRESS_PARTS = [  # in the order they are written, largest first
    ("province", _PROVINCE),
    ("city", rf"{_P}{{2,5}}?(?:自治州|地区|市|州|盟)"),
    # Generic area words (广东地区, 山区, 疫区, 病区) are one character + 区 but name no district (南山区 does).
    ("district", rf"(?![地山城市郊疫灾牧林景校病]区){_P}{{1,5}}?(?:自治县|新区|区|县|旗)"),
    ("town", rf"{_P}{{1,5}}?(?:街道|镇|乡)"),
    ("road", rf"{_P}{{1,8}}?(?:大道|大街|路|街|巷|胡同|弄)(?:[一二三四五六七八九十\d]+段)?"),
    # Numbers start at the start of a digit run and have bounded lengths: with `\d+` every position of a long
    # digit run would rescan the rest of it (quadratic; seconds for a few thousand digits).
    ("house", r"(?<!\d)\d{1,5}(?:[-之]\d{1,4})?号(?!楼)(?:院)?"),
    ("estate", rf"{_P}{{1,8}}?(?:小区|花园|新村|家园|公寓|大厦|社区|村|苑|园)"),
    ("building", r"(?:(?<!\d)\d{1,3}|(?<![A-Za-z])[A-Za-z])(?:号楼|栋|幢|座|区)"),
    ("unit", r"(?<!\d)\d{1,2}单元"),
    ("floor", r"(?<!\d)\d{1,3}(?:层|楼)"),
    # A room number with its suffix, or a bare 3-4 digit one ("3栋201") that no unit follows ("南山区 3天").
    ("room", rf"(?<!\d)(?:\d{{1,5}}(?:室|房|户)|\d{{3,4}}(?!{_UNIT_NEXT}))"),
]
_ADDRESS_CUE = r"(?P<cue>家庭住址|住址|地址|家住|住在|现住|居住在|居住于|家在)[:\s是为]*"
_ADDRESS = (
    rf"(?:{_ADDRESS_CUE})?(?P<value>(?![{_PLACE_NO_START}])"
    + "".join(rf"(?:(?P<{name}>{regex})[ ]?)?" for name, regex in _ADDRESS_PARTS[:-1])
    + rf"(?:(?P<room>{_ADDRESS_PARTS[-1][1]}))?)"
)
_COARSE_PARTS = ("province", "city")


def _is_address(match: re.Match[str]) -> bool:
    """An address chain counts when a cue ("家住") precedes it, or when it has two or more parts of which one is
    finer than a city: a province or city alone is kept (it matters for regional outbreaks and identifies no
    one), and a lone "3楼" or "心前区" is far more often clinical or hospital text than an address."""
    parts = [name for name, _ in _ADDRESS_PARTS if match.group(name)]
    if match.group("room") and match.group("room").isdigit() and len(parts) == 1:
        return False  # a bare number is never an address on its own, cue or not
    if match.group("cue"):
        return bool(parts)
    return len(parts) >= 2 and any(name not in _COARSE_PARTS for name in parts)


# name -> (placeholder label, regex). Order matters: earlier patterns mask first, so an e-mail containing a
# phone number is masked as one e-mail, an ID number is not half-taken by the mobile-number pattern, and a
# labelled record number is taken whole before the phone patterns look at its digits.
DEFAULT_PATTERNS: dict[str, tuple[str, str]] = {
    # Starts only where a run of address characters starts: otherwise a long run without "@" is rescanned from
    # every one of its positions (quadratic).
    "email": ("邮箱", r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"),
    # WeChat ids start with a letter, 6-20 letters/digits/_/-; a wxid_ id is recognisable without a label.
    "wechat": (
        "微信号",
        r"(?<![A-Za-z0-9_])wxid_[A-Za-z0-9]{4,30}(?![A-Za-z0-9_])"
        r"|(?:微信|(?<![A-Za-z])(?i:wechat|weixin|vx|wx)|(?i:v)信|威信|薇信)(?:号码?|账号|(?i:id))?[:\s是为]*"
        r"(?P<value>[A-Za-z][A-Za-z0-9_\-]{5,19})(?![A-Za-z0-9_\-])",
    ),
    "qq": ("QQ号", r"(?:(?<![A-Za-z])(?i:qq)|扣扣)(?:号码?)?[:\s是为]*(?P<value>[1-9]\d{4,10})(?!\d)"),
    "id_card": ("身份证号", _ID_CARD),
    "birth_date": ("出生日期", _DATE_OF_BIRTH),
    # Hospital record numbers only when labelled: a bare number is far more likely to be clinical.
    "record_no": (
        "病历号",
        rf"(?:住院|门诊|急诊|病历|病案|就诊卡?|诊疗卡|挂号)(?:编号|号码|卡号|号){_LABEL_GLUE}{_LABELLED_VALUE}",
    ),
    "insurance_no": (
        "医保卡号",
        rf"(?:医保|社保|医疗保险|新农合)(?:卡号码|卡号|卡|号码|编号|号){_LABEL_GLUE}{_LABELLED_VALUE}",
    ),
    "certificate_no": (
        "证件号",
        rf"(?:出生(?:医学)?证明?|证件|护照|通行证)(?:编号|号码|号){_LABEL_GLUE}{_LABELLED_VALUE}",
    ),
    "mobile": ("电话", _MOBILE),
    "landline": ("电话", _LANDLINE),
    # Passports (E/G/D/S/P + 8 digits, or E + letter + 7 digits), 回乡证 (H/M + 8-10 digits), 港澳通行证 (C + 8),
    # 台湾通行证 (T + 8), Hong Kong ID cards (A123456(7)). Either case: people type them in lower case.
    "passport": (
        "证件号",
        r"(?<![0-9A-Za-z])(?i:[EGDSPT]\d{8}|E[A-Z]\d{7}|[HM]\d{8,10}|C[A-Z0-9]\d{7}|[A-Z]{1,2}\d{6}\([0-9A]\))"
        r"(?![0-9A-Za-z])",
    ),
    "ipv4": ("IP地址", r"(?<![\d.])(?:" + _OCTET + r"\.){3}" + _OCTET + r"(?![\d.])"),
    "name": ("姓名", _NAME),
    "address": ("地址", _ADDRESS),
}
# Built-in patterns whose regex alone over-matches: a match counts only when this says so. Dropped when the
# user overrides the pattern (their regex is taken as meant).
_CHECKS: dict[str, Callable[[re.Match[str]], bool]] = {"address": _is_address}


@functools.lru_cache(maxsize=8192)
def _nfkc(char: str) -> str:
    return unicodedata.normalize("NFKC", char)


def _mask_span(match: re.Match[str]) -> tuple[int, int]:
    """The span to replace: the `value` group (built-ins also use `named`, `surname`) when one matched, else all;
    without the spaces at its ends, which belong to the sentence ("住在南山区 3天了")."""
    start, end = match.span()
    for group in ("value", "named", "surname"):
        if group in match.re.groupindex and match.group(group) is not None:
            start, end = match.span(group)
            break
    text = match.string
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class Deidentifier:
    """Masks personal identifiers in text with bracketed placeholders such as [电话], [姓名], [地址].

    patterns: extra or overriding patterns by name. A name that matches a default (see DEFAULT_PATTERNS)
    replaces that default's regex and keeps its placeholder; an empty string disables that default; a new name
    adds a pattern whose placeholder is `[name]`, applied after the defaults. A pattern with a named group
    `value` masks only that group (so a label such as "住院号：" stays readable). Patterns see NFKC-normalised
    text: write ASCII digits, letters and ":" in them, not full-width ones.
    enabled: False turns masking off entirely (for data that is already clean or never leaves the machine).

    Turning masking off, or dropping built-in patterns, logs a warning when the object is built, and
    `describe()` says so for the stage manifest.
    """

    def __init__(self, patterns: dict[str, str] | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        table: dict[str, tuple[str, str]] = dict(DEFAULT_PATTERNS)
        self._dropped: list[str] = []
        self._overridden: list[str] = []
        self._custom: list[str] = []
        for name, regex in (patterns or {}).items():
            if not regex:
                if table.pop(name, None) is not None and name in DEFAULT_PATTERNS:
                    self._dropped.append(name)
                continue
            if name in DEFAULT_PATTERNS:
                self._overridden.append(name)
            else:
                self._custom.append(name)
            if unicodedata.normalize("NFKC", regex) != regex:
                logger.warning("de-identification pattern %r contains characters that NFKC normalisation changes "
                               "(such as full-width ：（）０-９); text is matched after NFKC, so write their ASCII "
                               "forms or the pattern may never match", name)
            label = table[name][0] if name in table else name
            table[name] = (label, regex)
        self._compiled: list[tuple[str, str, re.Pattern[str], Callable[[re.Match[str]], bool] | None]] = []
        for name, (label, regex) in table.items():
            try:
                compiled = re.compile(regex)
            except re.error as exc:
                raise ValueError(f"de-identification pattern {name!r} is not a valid regex: {exc}") from exc
            check = _CHECKS.get(name) if name not in self._overridden else None
            self._compiled.append((name, f"[{label}]", compiled, check))
        self._warn_if_weakened()

    def _warn_if_weakened(self) -> None:
        """Say loudly, once, when text may leave the machine with identifiers in it."""
        if not self.enabled:
            logger.warning("de-identification is DISABLED (deidentify: false): names, phone numbers, ID numbers "
                           "and addresses are sent to the judge as written")
        elif not self._compiled:
            logger.warning("de-identification has no patterns left: every built-in pattern was emptied, so "
                           "nothing is masked")
        elif self._dropped:
            logger.warning("de-identification built-in patterns removed by configuration: %s; those identifiers "
                           "are sent to the judge unmasked", ", ".join(self._dropped))
        if self.enabled and self._overridden:
            logger.info("de-identification built-in patterns replaced by configuration: %s",
                        ", ".join(self._overridden))

    @property
    def pattern_names(self) -> list[str]:
        """Names of the active patterns, in the order they are applied."""
        return [name for name, _, _, _ in self._compiled]

    def describe(self) -> dict[str, Any]:
        """What this de-identifier masks, for the stage manifest (names only, never regexes or text)."""
        names = self.pattern_names
        return {
            "enabled": self.enabled,
            "normalization": "NFKC",
            "patterns": names,
            "builtin_patterns_dropped": list(self._dropped),
            "builtin_patterns_overridden": list(self._overridden),
            "custom_patterns": list(self._custom),
            "names": self.enabled and "name" in names,
            "addresses": self.enabled and "address" in names,
        }

    def mask(self, text: str, counts: dict[str, int] | None = None) -> str:
        """Return `text` with every identifier replaced by its placeholder (unchanged when disabled).

        Matching runs on the NFKC form; characters outside the masked spans are returned as written. `counts`,
        when given, gains the number of occurrences masked per pattern name (for the audit log).
        """
        if not self.enabled or not text or not self._compiled:
            return text
        # norm[i] is one character of the normalised text; src[i] is the original text it stands for. A
        # character that NFKC expands ("℃" -> "°C") gives its original to the first piece and "" to the rest.
        norm: list[str] = []
        src: list[str] = []
        for char in text:
            pieces = _nfkc(char)
            norm.extend(pieces)
            src.append(char)
            src.extend([""] * (len(pieces) - 1))
        for name, placeholder, pattern, check in self._compiled:
            spans = [_mask_span(m) for m in pattern.finditer("".join(norm)) if check is None or check(m)]
            spans = [(start, end) for start, end in spans if end > start]
            if not spans:
                continue
            # Counts only, never the matched values: logs may themselves leave the machine.
            logger.debug("de-identified %d %s occurrence(s)", len(spans), name)
            if counts is not None:
                counts[name] = counts.get(name, 0) + len(spans)
            for start, end in reversed(spans):
                while start > 0 and src[start] == "":  # never cut an expanded character in half
                    start -= 1
                while end < len(src) and src[end] == "":
                    end += 1
                # The placeholder's later characters carry "" so a later pattern cannot split it either.
                norm[start:end] = list(placeholder)
                src[start:end] = [placeholder] + [""] * (len(placeholder) - 1)
        return "".join(src)

    def mask_messages(self, messages: Iterable[dict[str, Any]],
                      counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """Return copies of chat messages with their text content masked (`counts` as in `mask`).

        Content may be a string or a list of parts ({"type": "text", "text": ...}); other fields are kept.
        """
        out: list[dict[str, Any]] = []
        for message in messages:
            copy = dict(message)
            content = copy.get("content")
            if isinstance(content, str):
                copy["content"] = self.mask(content, counts)
            elif isinstance(content, list):
                copy["content"] = [
                    {**part, "text": self.mask(part["text"], counts)}
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                    else part
                    for part in content
                ]
            out.append(copy)
        return out
