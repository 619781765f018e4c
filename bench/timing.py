"""Wall-clock timing with the statistics the report shows: median, min, max, mean."""

import statistics
import time


def summarize(seconds):
    """{"median", "min", "max", "mean", "n"} of a list of durations in seconds."""
    if not seconds:
        raise ValueError("no durations to summarize")
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
            "mean": statistics.fmean(seconds), "n": len(seconds)}


def scaled(summary, factor):
    """A summary with every duration multiplied by `factor` (e.g. per chunk -> per step)."""
    return {key: (value * factor if key != "n" else value) for key, value in summary.items()}


def stopwatch(call):
    """Run call() (which must block until its work is done) and return (its result, seconds)."""
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start
