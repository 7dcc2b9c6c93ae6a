#!/usr/bin/env bash
# Download VOC-MLT's images (VOC2012 trainval + VOC2007 test) and check the shipped split files.
# Thin wrapper around `python -m tailclip.tools.download voc_mlt`; runs from any folder, arguments pass through
# (see --help). The working folder is kept so that a relative --root means what the caller expects.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="$repo/.venv/bin/python"
[ -x "$python" ] || python=python3
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m tailclip.tools.download voc_mlt "$@"
