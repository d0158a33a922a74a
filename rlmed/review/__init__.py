"""Doctors in the loop: a blind review web app over a run's answers, whose labels become training rows.

tasks (what to compare, sides, who labels what) → store (SQLite, WAL, fsync'd) → server (Starlette + the page in
static/) → export (pairs, KTO and SFT rows, judge-check labels) → report (the "Doctors" section's numbers).
`rlmed review RUN_DIR` and `rlmed review export RUN_DIR` are in cli.
"""
