"""The ``polyact`` command: plaintext verbs (:mod:`~polyact.cli.commands`), encrypted verbs
and the service (:mod:`~polyact.cli.encrypted`), and the end-to-end demo (:mod:`~polyact.cli.demo`)."""
from .commands import build_parser, main

__all__ = ["build_parser", "main"]
