"""Watching a run live: its state and small preview images (`live`), served to a browser page
(`server`, `page.html`) by `--preview`, or shown in a notebook cell (`notebook`).

The run's thread only hands over numbers and a callable for the images: resizing and encoding
happen on a worker thread, and each browser is fed by a thread of its own, so a slow or vanished
browser never holds up a step.
"""
