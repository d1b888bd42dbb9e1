"""Command-line tools (console entry points)."""
