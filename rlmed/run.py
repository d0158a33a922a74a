"""Entry point: `python rlmed/run.py recipes/x.yaml` or `deepspeed rlmed/run.py recipes/x.yaml`.

Run as a script, Python puts this file's folder (rlmed/) first on sys.path, where its modules would shadow
top-level names; put the project root there instead so `import rlmed` finds this checkout.
"""

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))

from rlmed.cli import run_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main())
