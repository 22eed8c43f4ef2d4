"""The one YAML reader of the package: ``yaml.safe_load`` with aliases and oversized files refused.

A YAML alias (``*name``) reuses a node; nested aliases let a file of a few hundred bytes expand to
billions of values (the "billion laughs" pattern), which every later check, error message or
``repr`` would then walk. No configuration of this package needs aliases, so they are refused
while the file is composed, before any value is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["MAX_YAML_BYTES", "load_yaml", "load_yaml_text"]

#: Larger configuration files are refused before parsing (configs here are a few kB).
MAX_YAML_BYTES = 1 << 20


def _loader_class() -> type:
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D401 - PyYAML hook
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ValueError(f"YAML aliases (*{event.anchor}) are not allowed here (line "
                                 f"{event.start_mark.line + 1}): write the value out in full")
            return super().compose_node(parent, index)

    return _NoAliasLoader


def load_yaml_text(text: str, source: str = "<string>") -> Any:
    """Parse YAML text safely (``SafeLoader``, no aliases, at most :data:`MAX_YAML_BYTES`).

    Args:
        text: The YAML document.
        source: Name used in error messages (a file path).

    Raises:
        ValueError: the text is too large, uses an alias, or is not valid YAML; naming ``source``.
    """
    import yaml

    if not isinstance(text, str):
        raise TypeError(f"{source}: YAML text must be a str, got {type(text).__name__}")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise ValueError(f"{source}: {len(text)} characters is more than the {MAX_YAML_BYTES} bytes a configuration "
                         "file may hold; is this the right file?")
    loader = None
    try:
        loader = _loader_class()(text)  # the reader rejects control characters here already
        return loader.get_single_data()
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML ({exc})") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file with :func:`load_yaml_text`; the size is checked before the file is read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: too large, an alias, invalid YAML or not UTF-8; naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {size} bytes is more than the {MAX_YAML_BYTES} bytes a configuration file may "
                         "hold; is this the right file?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return load_yaml_text(text, str(path))
