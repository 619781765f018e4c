"""Reading XLA's optimized HLO text: which convolutions got a library kernel, and what each
top-level instruction computes (to attribute profiler time to convolutions, Grams, copies)."""

import re

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z\-]+)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LIBRARY_KIND = re.compile(r'"kind":"(__\w+)"')
# The input gradient's kernel, rotated and transposed: .../conv4_2/rev or .../conv4_2/transpose.
_KERNEL_REARRANGEMENT = re.compile(r"VGG19\)+/conv\d_\d/(rev|transpose)$")


def computations(text):
    """{computation name: [instruction lines]} of an HloModule's text."""
    blocks, current = {}, None
    for line in text.splitlines():
        match = _COMPUTATION.match(line)
        if match and not line.startswith(" "):
            current = match.group(1)
            blocks[current] = []
        elif current is not None and line.strip() not in ("", "}"):
            blocks[current].append(line)
    return blocks


def instructions(text):
    """[{name, opcode, computation, line, calls, op_name, library, body}] for every instruction.

    `library` is the fusion kind XLA gave a custom fusion ("__ynn_fusion", "__xnn_fusion",
    "__onednn_fusion", ...) or None; `body` the lines of the computation a fusion calls.
    """
    blocks = computations(text)
    found = []
    for computation, lines in blocks.items():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            calls = _CALLS.search(line)
            op_name = _OP_NAME.search(line)
            library = _LIBRARY_KIND.search(line) if "kind=kCustom" in line else None
            found.append({"name": match.group(1), "opcode": match.group(2), "computation": computation,
                          "line": line,
                          "calls": calls.group(1) if calls else None,
                          "op_name": op_name.group(1) if op_name else "",
                          "library": library.group(1) if library else None,
                          "body": blocks.get(calls.group(1), []) if calls else []})
    return found


def convolution_backends(text):
    """{backend: number of convolutions} of an optimized HLO module.

    XLA's CPU backend runs a convolution (1) through a library when it sits in a custom fusion
    whose kind names it ("__ynn_fusion", "__xnn_fusion", "__onednn_fusion"); (2) through its
    Eigen runtime when it stands alone in canonical form (NHWC input, HWIO kernel: dim_labels
    b01f_01io->b01f); (3) otherwise as naive loop nests, several times slower ("loops").
    """
    blocks = computations(text)
    listing = instructions(text)
    library_of = {i["calls"]: i["library"] for i in listing if i["library"]}
    fused = {i["calls"] for i in listing if i["opcode"] == "fusion"}
    counts = {}
    for name, lines in blocks.items():
        for line in lines:
            if " convolution(" not in line:
                continue
            if name in library_of:
                backend = library_of[name]
            elif name not in fused and "dim_labels=b01f_01io->b01f" in line:
                backend = "eigen"
            else:
                backend = "loops"
            counts[backend] = counts.get(backend, 0) + 1
    return counts


def category(instruction):
    """What a top-level instruction spends its time on, in the terms of the step's cost model."""
    body = " ".join(instruction["body"] + [instruction["line"]])
    op_name = instruction["op_name"]
    if " convolution(" in body:
        # JAX names the backward pass's operations transpose(jvp(...)).
        backward = "transpose(jvp" in op_name
        return "convolution, input gradient" if backward else "convolution, forward"
    if " dot(" in body:
        return "Gram matrices (dot)"
    if _KERNEL_REARRANGEMENT.search(op_name):
        return "kernel flip/transpose (copies)"
    if instruction["opcode"] in ("while", "conditional", "call", "tuple", "get-tuple-element",
                                 "parameter", "constant", "bitcast"):
        return None  # containers and views: their contents are timed on their own
    return "other (ReLU, pooling, losses, Adam, copies)"


def layer(instruction):
    """The VGG layer an instruction belongs to (conv4_2, ...), or None."""
    match = re.search(r"/(conv\d_\d)/", instruction["op_name"] + "/")
    return match.group(1) if match else None
