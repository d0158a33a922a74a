"""Plot fonts: RLMED_PLOT_FONT is registered and heads the fallback chain, a missing one is named, and CJK
labels without a CJK font give one warning instead of matplotlib's per-glyph warnings."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import matplotlib
import pytest
from matplotlib import font_manager, rcParams

from rlmed.eval import plot_fonts
from rlmed.eval.plot_fonts import FONT_ENV, plot_fonts as fonts_for
from rlmed.eval.report import render_report
from tests.unit.test_eval_report import make_run

BUNDLED = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == plot_fonts.__name__ and r.levelno == logging.WARNING]


@pytest.fixture
def no_cjk_font(monkeypatch):
    """As on a machine without CJK fonts (this one has only DejaVu), whatever is installed where tests run."""
    monkeypatch.setattr(plot_fonts, "CJK_FAMILIES", ())
    monkeypatch.delenv(FONT_ENV, raising=False)


def test_env_font_is_registered_and_heads_the_family_chain(tmp_path, monkeypatch, caplog):
    # A copy under a new path, so finding it in matplotlib's font list proves this call registered it.
    font = tmp_path / "rlmed-test-serif.ttf"
    shutil.copy(BUNDLED / "DejaVuSerif.ttf", font)
    monkeypatch.setenv(FONT_ENV, str(font))
    default = list(rcParams["font.family"])
    with fonts_for(["sft", "ppo"]) as families:
        assert families[0] == "DejaVu Serif" and families[1:len(default) + 1] == default
        assert list(rcParams["font.family"]) == families  # in effect inside the block
        assert str(font) in {entry.fname for entry in font_manager.fontManager.ttflist}
    assert list(rcParams["font.family"]) == default  # the user's rcParams are back afterwards
    assert _font_warnings(caplog) == []


def test_missing_env_font_warns_naming_the_variable(tmp_path, monkeypatch, caplog):
    missing = tmp_path / "nowhere.ttf"
    monkeypatch.setenv(FONT_ENV, str(missing))
    with fonts_for(["sft"]) as families:
        assert families == list(rcParams["font.family"]) + plot_fonts.installed_cjk_families()
    (message,) = _font_warnings(caplog)
    assert f"{FONT_ENV}={missing}: no such file" in message


def test_cjk_labels_without_a_cjk_font_warn_once_and_silence_glyph_warnings(tmp_path, no_cjk_font, caplog):
    results = {"baseline": "基线", "eval_sets": {"儿科对话": {"rows": 2, "kind": "generation"}},
               "metrics": {"基线": {"儿科对话/rouge_l": 10.0}, "微调": {"儿科对话/rouge_l": 12.0}}}
    run_dir = make_run(tmp_path, reward_stages=False, results=results)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so a glyph warning could not hide behind the once-per-place filter
        render_report(run_dir, "eval")
    assert not [w for w in caught if "missing from font" in str(w.message)]
    (message,) = _font_warnings(caplog)
    assert "'基线'" in message and "apt-get install fonts-noto-cjk" in message and f"{FONT_ENV}=" in message


def test_glyph_warnings_stay_when_the_labels_have_no_cjk(no_cjk_font, caplog):
    from rlmed.eval.plots import _figure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fonts_for(["sft", "dialogues/rouge_l"]):
            fig = _figure(2, 1)
            fig.text(0.1, 0.5, "儿科")  # text no label announced: matplotlib's own warning is left alone
            fig.canvas.draw()
    assert _font_warnings(caplog) == []
    assert [w for w in caught if "missing from font" in str(w.message)]
