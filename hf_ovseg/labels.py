"""Class names: parsing user labels (classes and their synonyms) into a [`LabelSet`].

A class may carry synonyms (``"sky,clouds"``); each synonym is embedded separately and a class's probability
is the max over its synonyms (the anchors' rule). Names the CLIP text tower cannot tell apart are an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LabelSet:
    """Parsed class names. ``labels[c]`` is the display name of class c; ``synonyms[c]`` its names to embed."""

    labels: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]

    @property
    def flat(self) -> tuple[str, ...]:
        """Every synonym in class order: the rows of the text embedding matrix."""
        return tuple(name for names in self.synonyms for name in names)

    @property
    def synonym_index(self) -> torch.Tensor:
        """[C, S] rows of ``flat`` for each class, S = most synonyms; shorter rows repeat their first entry
        (harmless under a max)."""
        width = max(len(names) for names in self.synonyms)
        rows, start = [], 0
        for names in self.synonyms:
            row = list(range(start, start + len(names)))
            rows.append(row + [start] * (width - len(row)))
            start += len(names)
        return torch.tensor(rows)


#: Separates the synonyms of one class everywhere; in a list item (and a labels file line) a comma does too.
SYNONYM_SEPARATOR = "|"


def _names(item: str, separators: tuple[str, ...]) -> list[str]:
    """``item`` split on any of ``separators``, each name stripped."""
    for separator in separators[1:]:
        item = item.replace(separator, separators[0])
    return [name.strip() for name in item.split(separators[0])]


def _split_synonyms(item: str, separators: tuple[str, ...], position: int, source: str) -> tuple[str, ...]:
    """The synonyms of one class item; an empty class or an empty synonym (``"dog||cat"``) is an error."""
    if not item.strip():
        raise ValueError(f"{source} has an empty class name (item {position + 1}): remove the extra separator")
    names = _names(item, separators)
    if not all(names):
        raise ValueError(
            f"{source} item {position + 1} ({item.strip()!r}) has an empty synonym: remove the extra separator"
        )
    return tuple(names)


def _token_key(name: str, tokenizer: Any) -> tuple:
    """What the text tower sees of a name: its token ids (the CLIP tokenizer lowercases and folds white
    space), or that normalisation itself when no tokenizer is given."""
    if tokenizer is None:
        return (" ".join(name.lower().split()),)
    return tuple(tokenizer(name, add_special_tokens=False)["input_ids"])


def parse_labels(
    candidate_labels: str | list[str] | tuple[str, ...],
    tokenizer: Any = None,
    strict: bool = True,
    source: str = "candidate_labels",
    separator: str | None = None,
) -> LabelSet:
    """Parse class names.

    A list gives one class per item, whose synonyms are separated by commas or ``|`` (``"sky,clouds"``), or by
    ``separator`` alone when it is given (ProxyCLIP's class files: ``"; "``, their names may hold commas); a
    single string gives one class per comma, synonyms separated by ``|`` (``"road,sky|clouds"``).

    Raises ``ValueError`` (naming ``source``, e.g. ``--labels`` for the CLI) on an empty list, an empty item or
    synonym (``"dog,,cat"``, ``"dog| ,cat"``), and on names the text tower cannot tell apart (same tokens, e.g.
    ``cat`` and ``Cat``): duplicate classes, a synonym repeated in its class, or (with ``strict``) a synonym
    shared by two classes. ``strict=False`` allows the last, which some anchors' class files contain
    (COCO-Object's "bed" is both a background word and a class).
    """
    if isinstance(candidate_labels, str):
        items, separators = candidate_labels.split(","), (SYNONYM_SEPARATOR,)
    elif isinstance(candidate_labels, (list, tuple)):
        if not all(isinstance(item, str) for item in candidate_labels):
            raise ValueError(f"{source} must be strings")
        items, separators = list(candidate_labels), (separator,) if separator else (SYNONYM_SEPARATOR, ",")
    else:
        raise ValueError(f"{source} must be a string or a list of strings, got {type(candidate_labels).__name__}")
    if not any(any(_names(item, separators)) for item in items):
        raise ValueError(f"{source} is empty: give at least one class name, e.g. road, tree, sky")
    synonyms = [_split_synonyms(item, separators, position, source) for position, item in enumerate(items)]
    labels = [names[0] for names in synonyms]
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise ValueError(f"{source} has duplicate labels: {', '.join(duplicates)}")
    owners: dict[tuple, tuple[int, str]] = {}
    for index, names in enumerate(synonyms):
        for name in names:
            key = _token_key(name, tokenizer)
            if key not in owners:
                owners[key] = (index, name)
                continue
            other_index, other = owners[key]
            if other_index == index:
                raise ValueError(
                    f"class {labels[index]!r} lists {other!r} and {name!r}, which the text tower cannot tell apart "
                    "(the CLIP tokenizer ignores case and extra spaces): give each synonym once"
                )
            if other == labels[other_index] and name == labels[index]:
                raise ValueError(
                    f"{source} has duplicate labels: {other!r} and {name!r} tokenize identically "
                    "(the CLIP tokenizer ignores case and extra spaces)"
                )
            if strict:
                raise ValueError(
                    f"{name!r} (class {labels[index]!r}) and {other!r} (class {labels[other_index]!r}) tokenize "
                    "identically: a name can belong to one class only"
                )
    return LabelSet(tuple(labels), tuple(synonyms))


__all__ = ["SYNONYM_SEPARATOR", "LabelSet", "parse_labels"]
