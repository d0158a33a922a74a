"""Fonts for the report's plots, so Chinese eval-set, model and stage names render as text, not boxes.

matplotlib's default font (DejaVu Sans) has no CJK glyphs. `plot_fonts(labels)` is a context manager that sets
`font.family` to a list, which matplotlib (≥ 3.6) treats as a fallback chain per character: the font from
RLMED_PLOT_FONT (a file, registered with fontManager.addfont), then the user's own font.family (so Latin text
looks as it always did), then every installed CJK family from a list of well-known names. It is an
rc_context, so the user's global rcParams are back as they were afterwards (a notebook keeps its settings).

When the labels contain CJK characters and no font with CJK glyphs is available, it logs one warning saying
what to do, and silences matplotlib's "Glyph N missing from font(s)" warning, which would otherwise repeat for
every character of every label on every plot.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

logger = logging.getLogger(__name__)

FONT_ENV = "RLMED_PLOT_FONT"
# Well-known CJK families (Linux packages, macOS, Windows), most complete Simplified-Chinese coverage first.
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans SC",
    "Noto Serif CJK SC", "Source Han Sans SC", "Source Han Sans CN", "Source Han Sans", "Source Han Serif SC",
    "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC",
    "Heiti TC", "STHeiti", "Hiragino Sans GB", "Arial Unicode MS", "AR PL UMing CN", "AR PL UKai CN",
    "AR PL UMing TW", "SimSun", "Droid Sans Fallback",
)
# CJK radicals and punctuation, kana, unified ideographs (with extension A), Hangul, compatibility ideographs,
# full-width forms: the characters DejaVu Sans lacks that eval-set and model names use.
CJK_CHARS = re.compile("[\u2e80-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
PROBE = "中"  # a font "has CJK glyphs" when it has this one
GLYPH_WARNING = r"Glyph \d+ .*missing from font"

_registered: dict[str, str] = {}  # font file -> family; addfont appends to the global list, so once per file


def cjk_text(labels: Iterable[str]) -> str | None:
    """The first label containing a CJK character, or None."""
    return next((label for label in labels if CJK_CHARS.search(label)), None)


def _has_glyph(path: str, char: str = PROBE) -> bool:
    from matplotlib import font_manager

    return ord(char) in font_manager.get_font(path).get_charmap()


def env_font() -> tuple[str | None, bool]:
    """(family, has CJK glyphs) of the font file RLMED_PLOT_FONT names, registered with matplotlib; (None, False)
    when the variable is unset, or with a warning naming it when the file is missing or not a font (the report
    is still drawn, with the installed fonts)."""
    from matplotlib import font_manager

    value = os.environ.get(FONT_ENV, "").strip()
    if not value:
        return None, False
    path = str(Path(value).expanduser().resolve())
    if path not in _registered:
        if not Path(path).is_file():
            logger.warning("%s=%s: no such file; plots use the installed fonts. Set %s to a .ttf/.otf/.ttc font "
                           "file (e.g. NotoSansCJK-Regular.ttc) or unset it", FONT_ENV, value, FONT_ENV)
            return None, False
        try:
            font_manager.fontManager.addfont(path)
            _registered[path] = font_manager.get_font(path).family_name
        except (OSError, RuntimeError, ValueError) as exc:
            logger.warning("%s=%s: matplotlib cannot load it as a font (%s); plots use the installed fonts. Set "
                           "%s to a .ttf/.otf/.ttc font file or unset it", FONT_ENV, value, exc, FONT_ENV)
            return None, False
    return _registered[path], _has_glyph(path)


def installed_cjk_families() -> list[str]:
    """The families of CJK_FAMILIES that matplotlib's font list has, in CJK_FAMILIES order."""
    from matplotlib import font_manager

    names = {entry.name for entry in font_manager.fontManager.ttflist}
    return [family for family in CJK_FAMILIES if family in names]


def font_families() -> tuple[list[str], bool]:
    """(the font.family fallback chain, whether any font in it has CJK glyphs)."""
    from matplotlib import rcParams

    chosen, env_cjk = env_font()
    cjk = installed_cjk_families()
    chain = [*([chosen] if chosen else []), *rcParams["font.family"], *cjk]
    return list(dict.fromkeys(chain)), env_cjk or bool(cjk)  # dict: unique, order kept


@contextmanager
def plot_fonts(labels: Iterable[str]) -> Iterator[list[str]]:
    """Within the block, plots use the fallback chain (yielded); rcParams are restored on exit."""
    from matplotlib import get_cachedir, rc_context

    families, has_cjk = font_families()
    example = cjk_text(labels)
    missing = example is not None and not has_cjk
    if missing:
        logger.warning(
            "report plots: labels such as %r contain Chinese/Japanese/Korean characters but no CJK font was found, "
            "so they show as boxes. Install one (Debian/Ubuntu: apt-get install fonts-noto-cjk, then delete "
            "matplotlib's font cache in %s so it is found) or set %s=/path/to/font.ttf; then `rlmed report "
            "<run_dir>` redraws the plots", example, get_cachedir(), FONT_ENV)
    with rc_context({"font.family": families}), warnings.catch_warnings():
        if missing:  # already said once above; matplotlib would repeat it per character and plot
            warnings.filterwarnings("ignore", message=GLYPH_WARNING, category=UserWarning)
        yield families
