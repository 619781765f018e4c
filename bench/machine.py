"""What the benchmark ran on: processor, accelerator, library versions, load and memory."""

import os
import platform
import resource
import sys

import jax
import jaxlib
import numpy as np

from nst_jax.engine.optimize import compiler_options

# CPU features that decide which matrix kernels XLA, oneDNN and MKL can use.
_INTERESTING_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
                          "amx_tile", "amx_bf16", "amx_fp16", "amx_int8")


def _cpuinfo_field(field):
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.split(":")[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def usable_cores():
    """Cores this process may run on (the affinity mask; a container may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def accelerator():
    """The default JAX device's kind ("NVIDIA H100 80GB HBM3", ...), or None on CPU."""
    device = jax.devices()[0]
    return None if device.platform == "cpu" else device.device_kind


def describe_machine():
    """CPU model, cores, CPU features that matter for matrix kernels, and the accelerator if any."""
    flags = (_cpuinfo_field("flags") or "").split()
    return {
        "cpu_model": _cpuinfo_field("model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cpu_flags": [flag for flag in _INTERESTING_CPU_FLAGS if flag in flags],
        "memory_bytes": _meminfo_total(),
        "backend": jax.default_backend(),
        "accelerator": accelerator(),
        "device_count": jax.device_count(),
        "os": platform.platform(),
    }


def _proc_bytes(path, key):
    """A "Key:  N kB" field of a /proc file, in bytes; None where there is no such file or field."""
    try:
        with open(path) as fields:
            for line in fields:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _meminfo_total():
    return _proc_bytes("/proc/meminfo", "MemTotal")


def versions():
    """Python, JAX, jaxlib and the XLA it was built with, and the other libraries involved."""
    import flax
    import optax

    from jax.extend import backend

    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    # jaxlib pins one XLA commit per release: its git hash names that build, the extension
    # version numbers the C++ API, and the platform version the CUDA/ROCm runtime (or "cpu").
    from jaxlib import version as jaxlib_version
    from jax._src.lib import xla_client
    return {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla": {"jaxlib_git_hash": getattr(jaxlib_version, "_git_hash", None),
                "extension_version": getattr(xla_client, "_version", None),
                "platform_version": backend.get_backend().platform_version},
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "torch": torch_version,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "chunk_compiler_options": compiler_options(),
    }


def load_average():
    """1, 5 and 15 minute load averages (other processes compete for the cores: say so)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


# --- memory -------------------------------------------------------------------------------


def reset_host_peak():
    """Reset the kernel's peak-RSS mark of this process; True if it could (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # "5" resets VmHWM to the current RSS (proc(5))
        return True
    except OSError:
        return False


def host_peak_rss():
    """Peak resident set size of this process in bytes since the last reset_host_peak()."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    # No /proc: the peak since the process started (kilobytes on Linux, bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def device_memory():
    """The default device's allocator statistics (bytes), or None where it keeps none (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "largest_alloc_size")
    return {key: int(stats[key]) for key in keys if key in stats}


def publish(results, out, markdown):
    """A bench subcommand's ending: `results` get this machine's description, go to `out` as
    JSON when it is given, and `markdown(results, cpu model)` is printed."""
    import json

    machine = describe_machine()
    results["machine"] = machine
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
    print(markdown(results, machine.get("cpu_model", "this machine")))
