"""Regression over many bags: each (bag, engine) pair replayed through the node as a Ray task
(task.py), the two sides compared frame by frame (compare.py), a self-contained HTML page to look at
(html_report.py); the CLI is tools/regress.py (mobilevlm-regress)."""
