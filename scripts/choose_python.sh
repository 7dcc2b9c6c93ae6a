# The Python interpreter the scripts run, sourced by them from the repository root: $PYTHON,
# else the project's .venv (the README's set-up makes it, and need not activate it), else
# python3 from PATH.
python="${PYTHON:-.venv/bin/python}"
[ -n "${PYTHON:-}" ] || [ -x "$python" ] || python=python3
