"""Default implementations of the framework's pluggable parts.

- :class:`YamlConfigProvider`: the model configuration from a YAML file.
- :class:`FileSystemStorageAdapter`: immutable, versioned program storage on disk.
"""

from __future__ import annotations

from llm_server._yaml_config import YamlConfigProvider
from llm_server.programs._fs_storage import FileSystemStorageAdapter

__all__ = ["FileSystemStorageAdapter", "YamlConfigProvider"]
