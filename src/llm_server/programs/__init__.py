"""Programs: the versions a service serves, where they are kept, and how a new one ships.

A *program* is a DSPy module (or signature) registered once at startup; a *version* is an
immutable snapshot of its learned state (demos, instructions) with a manifest saying where it
came from. This package holds everything between "I have a better prompt" and "every replica
serves it"::

    register_program(Predictor)          ProgramManager: the registry of served programs
            │                            (id, served version, parse policy, capture)
            ▼
    optimize_program(...) ─► 1.1.0       an optimization run: score before and after, the
            │                            datasets' fingerprints, tokens and cost
            ▼
    save_program_version() ─► storage    FileSystemStorageAdapter (one folder per version,
            │                            atomic rename) or PostgresStorageAdapter (a fleet)
            ▼
    promote("qa", "1.1.0")  ─► release   recorded (who, when, why); every replica follows
    rollback("qa")          ─► release   (PostgreSQL NOTIFY plus a periodic check)

Each loaded version is checked against the program before it is served: the class, the
signature's fields, the content hash, and the state's shape. Only JSON is stored, never a
pickle, so loading a version cannot run code.

The names are public at their reference paths (the modules here are private):

- :mod:`llm_server.models.program_manager`: :class:`ProgramManager`, ``LATEST``,
  ``ProgramMetadata``, ``ProgramRegistry``, ``ReleasingStorage``, ``ModelManagerLike``
  (implemented in ``_manager``, ``_manager_releases``, ``_registry`` and ``_releases``);
- :mod:`llm_server.models.optimization`: ``optimize_program``, ``OptimizationRun``
  (``_optimization``);
- :mod:`llm_server.defaults`: ``FileSystemStorageAdapter`` (``_fs_storage``);
- :mod:`llm_server.postgres`: ``PostgresStorageAdapter``, ``Release`` (``_postgres_store``,
  ``_postgres_releases``, ``_postgres_watcher``, ``_postgres_schema``,
  ``_postgres_connections``, ``_postgres_signing``; the ``postgres`` extra).

Shared by all of them: ``_versioning`` (ids, version numbers, canonical JSON and hashes,
the release stack), ``_state`` (building a program, reading and applying its state) and
``_integrity`` (the manifest of a new version; the checks before a version is served).
"""

__all__: list[str] = []  # every name has its home at a reference path above
