"""One module per scenario; each has ``NAME`` and ``run(ctx) -> list[Row]``."""
