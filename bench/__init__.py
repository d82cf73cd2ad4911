"""The tokenfan benchmark: ``python -m bench`` (``./dev bench``) runs every
scenario of issue 5 against real processes on loopback and prints one table;
``--quick`` runs them all at small scale (CI)."""
