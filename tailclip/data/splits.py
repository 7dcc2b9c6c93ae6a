"""Strict readers for the benchmark's text files.

Three formats, one item per line (docs/custom_data.md lists them):
- split file: ``relative/path.jpg <label> <label> ...`` (labels are class indices, possibly
  none; the path holds no space);
- class-name file: ``<name> <index>`` (names may contain spaces: ``traffic light 9``);
- caption file: ``<path> <caption text>``.
Trailing spaces, blank lines at the end and Windows line endings are accepted.
Anything else that is off is a ``SplitFormatError`` naming the file and the line, because a
silently skipped line changes the class counts and therefore the tail metrics.
"""
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from tailclip.errors import TailCLIPError
from tailclip.wording import count


class SplitFormatError(TailCLIPError, ValueError):
    """A benchmark text file is malformed; the message names the file (and line)."""


class SplitEntry(NamedTuple):
    path: str  # image path relative to the dataset's image root
    labels: tuple[int, ...]  # class indices in file order, duplicates dropped


def _lines(path) -> Iterator[tuple[str, int, str]]:
    """Yield ("file:line", line number, text without trailing whitespace) per line; empty files and
    blank lines are errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except UnicodeDecodeError as error:
        raise SplitFormatError(f"{path}: not UTF-8 text ({error})") from None
    except OSError as error:  # a folder, no permission
        raise SplitFormatError(f"{path}: cannot be read ({error.strerror or error})") from None
    lines = text.split("\n")  # read_text turned "\r\n" into "\n"
    while lines and not lines[-1].strip():  # the newline ending the last line, blank lines after it
        lines.pop()
    if not lines:
        raise SplitFormatError(f"{path}: file is empty")
    for number, line in enumerate(lines, start=1):
        line = line.rstrip()
        if not line.strip():
            raise SplitFormatError(f"{path}:{number}: blank line")
        yield f"{path}:{number}", number, line


def _two_fields(line: str, where: str, expected: str, name_first: bool) -> list[str]:
    """Split a line in two at its first space, or at its last when the first field is a name."""
    parts = line.strip().rsplit(maxsplit=1) if name_first else line.strip().split(maxsplit=1)
    if len(parts) != 2:
        raise SplitFormatError(f"{where}: expected '{expected}', got {line!r}")
    return parts


def _non_negative_int(token: str, where: str, what: str, hint: str = "") -> int:
    if not (token.isascii() and token.isdigit()):  # rejects "-1", "3.0", "x"
        raise SplitFormatError(f"{where}: {what} {token!r} is not a non-negative integer{hint}")
    return int(token)


def _label(token: str, num_classes: int, where: str, class_file) -> int:
    # A path with a space reads as a path and labels: "my photo.jpg 3" has the label "photo.jpg".
    value = _non_negative_int(token, where, "label (a class index)",
                              "; the line is '<image path> <label> ...', and an image path cannot "
                              "contain spaces (rename the file or its folder)")
    if value >= num_classes:
        raise SplitFormatError(f"{where}: label {value} is out of range: unknown class "
                               f"({class_file or 'the class-name file'} defines {num_classes} "
                               f"classes, 0 to {num_classes - 1})")
    return value


def read_split(path, num_classes: int, class_file=None) -> list[SplitEntry]:
    """Read a split file into entries, in file order. Image paths must be unique.

    ``class_file`` (the class-name file the labels index) is named in label errors."""
    entries, first_seen = [], {}
    for where, number, line in _lines(path):
        image, *tokens = line.split()
        if image in first_seen:
            raise SplitFormatError(f"{where}: image {image} already listed on line {first_seen[image]}")
        first_seen[image] = number
        labels = [_label(token, num_classes, where, class_file) for token in tokens]
        entries.append(SplitEntry(image, tuple(dict.fromkeys(labels))))
    return entries


def read_class_names(path) -> list[str]:
    """Read ``<name> <index>`` lines; the indices must be exactly 0..C-1. Returns names by index."""
    named = {}
    for where, number, line in _lines(path):
        name, token = _two_fields(line, where, "<class name> <index>", name_first=True)
        index = _non_negative_int(token, where, "class index")
        if index in named:
            raise SplitFormatError(f"{where}: class index {index} already used on line {named[index][1]}")
        named[index] = (name, number)
    missing = sorted(set(range(max(named) + 1)) - set(named))
    if missing:
        raise SplitFormatError(f"{path}: class indices must run from 0 without gaps; missing {missing}")
    names = [named[index][0] for index in range(len(named))]
    repeated = {name for name in names if names.count(name) > 1}
    if repeated:
        raise SplitFormatError(f"{path}: class names used more than once: {sorted(repeated)}")
    return names


def read_captions(path, image_paths) -> dict[str, str]:
    """Read ``<path> <caption>`` lines for exactly the given images (every image, once)."""
    wanted = set(image_paths)
    captions, first_seen = {}, {}
    for where, number, line in _lines(path):
        image, caption = _two_fields(line, where, "<image path> <caption>", name_first=False)
        if image not in wanted:
            raise SplitFormatError(f"{where}: caption for {image}, which is not in the split")
        if image in first_seen:
            raise SplitFormatError(f"{where}: second caption for {image} (first on line {first_seen[image]})")
        first_seen[image] = number
        captions[image] = caption
    uncaptioned = [image for image in image_paths if image not in captions]
    if uncaptioned:
        raise SplitFormatError(
            f"{path}: {count(len(uncaptioned), 'image')} of the split "
            f"{'has' if len(uncaptioned) == 1 else 'have'} no caption, first: {uncaptioned[:3]}")
    return captions
