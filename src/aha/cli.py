"""The one stage-CLI helper: every `python -m aha STAGE` parses, logs and fails the same way.

A stage's `cli(argv, prog)` builds its parser with `parser`, reads JSON arguments (a config
section, a run) with `json_arg` (`add_json` adds such an option), and wraps its work in
`failing_as`, so a bad argument is argparse's usage line and a known failure is one line
`prog: message`, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def parser(prog: str, doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """The stage's parser; its description is the first paragraph of the module's docstring."""
    description = (doc or "").strip().split("\n\n")[0].replace("\n", " ")
    return argparse.ArgumentParser(prog=prog, description=description, **kwargs)


def json_arg(build: Callable[[Any], T] = lambda value: value) -> Callable[[str], T]:
    """An argparse `type`: the text parsed as JSON, then `build(value)` (a typed section, a Run).

    A text that is not JSON, or that `build` refuses with ValueError (ConfigError is one), is
    argparse's one-line usage error naming the option.
    """

    def parse(text: str) -> T:
        try:
            return build(json.loads(text))
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = "JSON"  # argparse names the type in its message
    return parse


def add_json(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    build: Callable[[Any], Any] = lambda value: value,
    **kwargs: Any,
) -> argparse.Action:
    """`flag JSON`, read with `json_arg(build)`: required unless it has a default (or says
    `required=False`)."""
    kwargs.setdefault("required", "default" not in kwargs)
    return p.add_argument(flag, type=json_arg(build), metavar="JSON", **kwargs)


def argv_list(value: Any) -> list[str]:
    """`build` for `add_json` of a command line: a non-empty JSON list of strings."""
    if not (isinstance(value, list) and value and all(isinstance(x, str) for x in value)):
        raise ValueError("must be a JSON list of strings")
    return value


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """(own options, the command after `--`) of a launcher's argv; no `--`: no command."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv[:cut], argv[cut + 1 :]


def setup_logging(level: int = logging.INFO) -> None:
    """One log line format for every stage (the rule's log file shows them in order)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)


@contextmanager
def failing_as(prog: str, *errors: type[BaseException]) -> Iterator[None]:
    """Inside, an exception of `errors` leaves as SystemExit(`prog: message`): one line."""
    try:
        yield
    except errors as err:
        raise SystemExit(f"{prog}: {err}") from None
