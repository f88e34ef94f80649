"""Griffe extension for the API pages (rendering only; the source is untouched).

polyact's docstrings are reST-flavoured: roles such as :func:`polyact.fit`, and parameter blocks

    Parameters
    ----------
    name : what it is
        continued
    a, b : shared description

This rewrites them into what mkdocstrings' Google-style parser reads: a role becomes a code span,
a parameter block an ``Args:`` section (one entry per name), which is rendered as a table with the
types taken from the signature.
"""
from __future__ import annotations

import re

from griffe import Extension, Object

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")
ENTRY = re.compile(r"^([A-Za-z_][\w, ]*?) : (.*)$")


def google_args(lines: list[str]) -> list[str]:
    """``lines`` with every numpy-like ``Parameters`` block turned into a Google ``Args:`` section."""
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "Parameters" and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            entries: list[tuple[list[str], list[str]]] = []
            i += 2
            while i < len(lines):
                match = ENTRY.match(lines[i])
                if match:
                    entries.append(([n.strip() for n in match.group(1).split(",")], [match.group(2)]))
                elif entries and lines[i].startswith((" ", "\t")) and lines[i].strip():
                    entries[-1][1].append(lines[i].strip())
                else:
                    break
                i += 1
            out.append("Args:")
            for names, description in entries:
                for name in names:
                    out += [f"    {name}: {description[0]}", *(f"        {line}" for line in description[1:])]
            continue
        out.append(lines[i])
        i += 1
    return out


class ReSTToGoogle(Extension):
    """Rewrite every docstring once the object tree is loaded."""

    def on_object(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = ROLE.sub(r"`\1`", "\n".join(google_args(obj.docstring.value.splitlines())))
