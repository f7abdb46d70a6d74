"""What every command-line entry point shares: one-line errors (exit code 2) and log records to stderr."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


class CliParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `prog: error: message`, exit code 2 (no usage block above it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def existing_path(text: str) -> str:
    """An argparse `type` for an input file or folder: a missing one is a one-line usage error naming it."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return text


def cli_logging(level: int = logging.INFO) -> None:
    """What a command-line entry point calls first: koclip's log records (training resumed, stopped early, ...) to
    stderr, one line each."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
