"""Name → method class, the one ``build_method`` entry every caller uses, and what turns a
configuration's ``method`` section into the method's typed options."""

from __future__ import annotations

from mlcl.config import Config, from_dict, to_plain
from mlcl.errors import ConfigError
from mlcl.methods.base import Method, MethodOptions

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


def method_options(config: Config) -> MethodOptions:
    """The typed options of ``config.model.method`` from ``config.method``; an unknown method, an
    unknown key or a bad value raises ``ConfigError`` naming it (``method.temperature: ...``)."""
    return get_method_class(config.model.method).Options.from_section(config.method)


def resolve_config(config: Config) -> Config:
    """A copy of ``config`` whose method section is checked and written out in full, defaults
    included: what a run saves beside itself (and hashes), so that it still reads the same
    when a default changes. Commands call it first, so a bad key stops them at once."""
    resolved = from_dict(config.to_dict())
    resolved.method = to_plain(method_options(config))
    return resolved


def for_restoring(config: Config) -> Config:
    """A copy of ``config`` without what only starts a fresh run: pre-trained weights and the
    method's ``start_only`` fields (a stage-1 checkpoint, prototypes). A run's own checkpoint
    holds all of that already, and the files they name may have moved since it was written."""
    restored = from_dict(config.to_dict())
    restored.model.pretrained, restored.model.pretrained_file = False, ""
    for name in get_method_class(config.model.method).Options.start_only:
        restored.method[name] = ""
    return restored
