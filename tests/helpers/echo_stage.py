"""A user-defined stage kind (`kind: tests.helpers.echo_stage`): copies its input file with a suffix.

Cheap, so the runner's skip/re-run graph can be tested without training; every execution is appended to
run_dir/executions.log so a test can see exactly which stages ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmed.stages.base import Input, StageContext, StageSpec


@dataclass(kw_only=True)
class Args:
    suffix: str = "!"
    fail: bool = False


def run(ctx: StageContext, inputs: dict[str, Any], args: Args) -> dict[str, Any]:
    with open(ctx.run_dir / "executions.log", "a", encoding="utf-8") as log:
        log.write(ctx.stage_id + "\n")
    if args.fail:
        raise RuntimeError("asked to fail")
    source = inputs["source"]
    text = Path(source[0].path if isinstance(source, list) else source).read_text(encoding="utf-8")
    ctx.output("text").write_text(text.strip() + args.suffix + "\n", encoding="utf-8")
    return {"chars": len(text)}


SPEC = StageSpec(kind="echo", args=Args, inputs={"source": Input("data")}, outputs={"text": "out.txt"}, run=run)
