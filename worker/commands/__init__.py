"""The commands a user runs besides the worker: tag, preview, enqueue (and backfill), skip, features, train."""
