"""Whether to draw progress bars: the one decision that training, caching, downloads,
``test.py`` and ``predict.py`` share.

A bar redraws itself many times a second. On a terminal that is one changing line; in a file
(a SLURM log, ``> train.log``) every redraw stays, thousands of lines an epoch. So bars are
drawn only when stderr, where they go, is a terminal; the training loop prints one line per
epoch either way. ``TAILCLIP_PROGRESS=1`` or ``0`` forces the choice (a terminal that Python
does not recognise, a log that should show them).
"""
import os
import sys

from tailclip.errors import TailCLIPError

PROGRESS_ENV = "TAILCLIP_PROGRESS"


def show_progress() -> bool:
    """True to draw progress bars: ``$TAILCLIP_PROGRESS`` when set, else whether stderr is a terminal."""
    forced = os.environ.get(PROGRESS_ENV, "")
    if forced in ("1", "0"):
        return forced == "1"
    if forced:
        raise TailCLIPError(f"${PROGRESS_ENV} must be 1 (draw progress bars) or 0 (never), got {forced!r}")
    return sys.stderr.isatty()
