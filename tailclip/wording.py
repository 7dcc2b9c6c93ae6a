"""How numbers read in messages and reports: "1 image", "2 images"; fractions in percent."""
import math


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, in the plural (``plural``, else ``noun + "s"``) unless one."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def percent(value, digits: int = 1) -> str:
    """A fraction in percent with ``digits`` decimals; "n/a" for None, NaN or inf."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"
