"""An app module that fails at import: a boot error the master must stop on, not respawn forever."""

raise RuntimeError("contract broken_app: failing at import on purpose")
