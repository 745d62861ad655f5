"""The one registry of pluggable code: each choice of a config group lives in a module of the same name.

``interpolation=tim`` runs :mod:`mer.preprocess.interpolation.tim`, ``magnification=eulerian`` runs
:mod:`mer.preprocess.magnification.eulerian`, ``model.architecture=ststnet`` builds :mod:`mer.models.ststnet`: a
:class:`Registry` is told its package, imports ``<package>.<name>`` the first time ``name`` is asked for, and that
module registers its implementation with :meth:`Registry.register`. Nothing lists the modules by hand, and a process
pays for a module's imports (a learned network, say) only when it uses it. Adding a choice is adding a module and
its ``conf/<group>/<name>.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from mer.errors import ConfigError

T = TypeVar("T", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry:
    """One registered implementation.

    Attributes:
        name: The config name that selects it (its module's name).
        build: The function or class itself.
        traits: What the caller needs to know of it beyond its signature (e.g. ``whole_segment=True`` for an
            interpolator that reads every recorded frame, ``validate`` for a check that loads weights).
    """

    name: str
    build: Callable[..., Any]
    traits: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """Implementations of one config group, by name.

    Args:
        group: The config group, for messages (``interpolation``, ``model architecture``, ...).
        package: The package whose module ``<name>`` registers the choice ``name``.
        reserved: Keys of the group's config node that are not options of the implementation (``name`` and, say,
            the magnification's ``alphas``): :meth:`bound` and :meth:`validate` pass every other key.
    """

    def __init__(self, group: str, package: str, reserved: tuple[str, ...] = ("name",)) -> None:
        self.group = group
        self.package = package
        self.reserved = reserved
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **traits: Any) -> Callable[[T], T]:
        """Decorator registering a function or class under ``name`` (normally its module's name).

        Args:
            name: The config value that selects it.
            **traits: Stored on its :class:`Entry` (see :attr:`Entry.traits`).
        """

        def add(build: T) -> T:
            self._entries[name] = Entry(name, build, dict(traits))
            return build

        return add

    def get(self, name: str) -> Entry:
        """The entry of ``name``, importing its module on first use.

        Raises:
            ConfigError: No module of the package registers ``name``; the message lists the known names.
        """
        if name not in self._entries and name in self._modules():
            importlib.import_module(f"{self.package}.{name}")
        if name not in self._entries:
            raise ConfigError(f"unknown {self.group} {name!r}; registered: {self.names()}")
        return self._entries[name]

    def options(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The implementation's options in a config node: every key but :attr:`reserved`."""
        return {key: value for key, value in dict(cfg).items() if key not in self.reserved}

    def bound(self, cfg: Mapping[str, Any]) -> Callable[..., Any]:
        """The implementation a config node names (``cfg["name"]``) with its options bound.

        Raises:
            ConfigError: An unknown name.
        """
        return partial(self.get(cfg["name"]).build, **self.options(cfg))

    def validate(self, cfg: Mapping[str, Any]) -> None:
        """Check that a config node can run: a known name, and the ``validate`` trait it registered (if any) passes
        with its options (e.g. loading published weights).

        Raises:
            ConfigError: The config cannot work (the message says why and how to fix it).
        """
        check = self.get(cfg["name"]).traits.get("validate")
        if check is not None:
            check(**self.options(cfg))

    def names(self) -> list[str]:
        """Every name that can be selected: the registered ones and the modules of the package (sorted)."""
        return sorted(set(self._entries) | set(self._modules()))

    def _modules(self) -> list[str]:
        package = importlib.import_module(self.package)
        return [info.name for info in pkgutil.iter_modules(package.__path__)
                if not info.ispkg and not info.name.startswith("_")]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()
