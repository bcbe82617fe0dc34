"""Tasks: datasets and generators behind one interface (see :mod:`wersa.tasks.base`)."""
