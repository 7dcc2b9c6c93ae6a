"""How counts read in messages: "1 image", "2 images"."""


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, in the plural (``plural``, else ``noun + "s"``) unless one."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
