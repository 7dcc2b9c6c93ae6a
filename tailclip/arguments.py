"""The command lines' argument parser: a flag it does not know gets a suggestion, the closest
flag of the command or, where the command has ``--set``, the config option it may name
(``--epoch=2``: did you mean ``--set epochs=2``?)."""
import argparse
import difflib


class ArgumentParser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}{self.suggestion(unknown)}")
        return namespace

    def suggestion(self, unknown: list[str]) -> str:
        """"; did you mean ...?" for the first unknown flag, or "" when nothing is close."""
        position = next((i for i, text in enumerate(unknown) if text.startswith("--")), None)
        if position is None:
            return ""
        flag, has_value, value = unknown[position].partition("=")
        if not has_value and position + 1 < len(unknown) and not unknown[position + 1].startswith("-"):
            value = unknown[position + 1]  # --epoch 2
        # Compared with dashes, as flags are spelt: --batch_size and --batch-size both find batch_size.
        # A flag of the command that is very close comes first (sweep.py's --seed is --seeds).
        flag = flag.replace("_", "-")
        flags = {name: name for name in self._option_string_actions if name.startswith("--")}
        candidates = dict(flags)
        if "--set" in flags:
            from tailclip.config import OPTION_NAMES  # here: the config module imports torch, --help does not

            for option in OPTION_NAMES:
                candidates.setdefault("--" + option.replace("_", "-"), f"--set {option}={value or 'VALUE'}")
        close = (difflib.get_close_matches(flag, flags, n=1, cutoff=0.8)
                 or difflib.get_close_matches(flag, candidates, n=1, cutoff=0.6))
        return f"; did you mean {candidates[close[0]]}?" if close else ""
