"""Action units: the paper's nine, and the one parser of FACS codes (sheets, sample tables, caches).

A FACS code lists AU numbers joined by ``+`` (also ``,``, ``;``, ``/`` or spaces); each may carry an ``AU``
prefix, a laterality or side prefix (``L``, ``R``, ``B``, ``T``, ``U``) and an intensity suffix (``A``-``E``):
``4+L10``, ``AU12B+R14A``. SAMM writes alternatives the coder could not decide between as ``R14A or 17A``: every
alternative is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

#: The nine action units of the paper, in the order of its AU graph.
AUS = (1, 2, 4, 10, 12, 14, 15, 17, 25)

_SEPARATORS = re.compile(r"[+,;/\s]+")
_AU_TOKEN = re.compile(r"(?:AU)?[LRBTU]?(\d+)[A-E]?", re.IGNORECASE)


def parse_action_units(text: str) -> tuple[tuple[int, ...], list[str]]:
    """Parse a FACS code such as ``4+L10`` or ``R12`` into AU numbers, prefixes and intensity stripped.

    Returns:
        (the AU numbers in order of appearance without repeats, the tokens that could not be read).
    """
    units: list[int] = []
    unreadable = []
    for token in _SEPARATORS.split(text.strip()):
        if not token or token.casefold() == "or":
            continue
        match = _AU_TOKEN.fullmatch(token)
        if match is None:
            unreadable.append(token)
        elif int(match.group(1)) not in units:
            units.append(int(match.group(1)))
    return tuple(units), unreadable


def parse_aus(value: Any) -> set[int]:
    """The AU numbers of one clip's label in any of the forms it is stored in; unreadable tokens are ignored.

    Args:
        value: A FACS code (:func:`parse_action_units`), an iterable of codes or ints, an int, or an empty value
            (None, NaN, ``""``).

    Returns:
        The set of AU numbers (all of them, not only those of :data:`AUS`).
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return set()
    if isinstance(value, (int, np.integer)):
        return {int(value)}
    if isinstance(value, str):
        return set(parse_action_units(value)[0])
    return set().union(*(parse_aus(item) for item in value)) if isinstance(value, Iterable) else set()


def format_aus(aus: Iterable[int]) -> str:
    """AU numbers as the sample table's code, ``"1+2+25"`` (read back by :func:`parse_action_units`)."""
    return "+".join(str(int(au)) for au in aus)
