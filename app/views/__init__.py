"""The app's pages; each has ``render(ctx)`` (Train: ``render()``)."""
