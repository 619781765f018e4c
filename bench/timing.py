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


def chunk_steps_in_turns(cases, rounds, chunk=5):
    """{key: median seconds per step} of the engine's chunk for each of `cases` ({key:
    ChunkInputs}), timed in turns: each case runs one chunk of `chunk` steps per round, so that
    the machine's drift touches all alike. Each is compiled and its history begun first; the
    first round is left out of the median."""
    import jax
    import numpy as np

    states = {}
    for key, inputs in cases.items():
        state = list(inputs.start)
        state[:2] = inputs.program()(*state, np.int32(2), *inputs.loss_args)[:2]
        states[key] = (inputs, state, [])
    for _ in range(rounds):
        for inputs, state, times in states.values():
            began = time.perf_counter()
            state[:2] = inputs.program()(*state, np.int32(chunk), *inputs.loss_args)[:2]
            jax.block_until_ready(state[0])
            times.append((time.perf_counter() - began) / chunk)
    return {key: float(np.median(times[1:])) for key, (_, _, times) in states.items()}
