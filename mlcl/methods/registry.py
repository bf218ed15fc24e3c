"""Name → method class, and the one ``build_method`` entry every caller uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlcl.errors import ConfigError
from mlcl.methods.base import Method

if TYPE_CHECKING:
    from mlcl.config import Config

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` buildable by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a non-empty 'name'")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method_class(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(method_names())
        raise ConfigError(f"model.method: unknown method {name!r} (known: {known})") from None


def build_method(config: Config, num_classes: int, num_train_images: int) -> Method:
    """Build the method named by ``config.model.method``."""
    cls = get_method_class(config.model.method)
    return cls(config, num_classes=num_classes, num_train_images=num_train_images)
