"""tests/contract: gunicorn's whole contract (settings, signals, hooks, logs), real masters."""
