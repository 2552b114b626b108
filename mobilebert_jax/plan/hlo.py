"""What a program's HLO text says: the collectives of the compiled program
(`compiled.as_text()`) by kind, with their count and bytes per device, and the matmul FLOPs of
the program as lowered (`lowered.as_text(dialect="hlo")`, before XLA rewrites its dots).

Kinds: all-gather, all-reduce, reduce-scatter, all-to-all, collective-permute. An asynchronous
pair (`all-gather-start` / `all-gather-done`) counts once. XLA:TPU writes a reduce-scatter as a
fusion that calls a computation named `all-reduce-scatter*` (an all-reduce and a dynamic-slice):
that fusion counts as a reduce-scatter, and the all-reduce inside it not as an all-reduce.
A collective op counts once per `channel_id`: XLA:TPU's asynchronous collective fusion (v5e,
v6e) writes one all-gather into several computations, each copy with the same channel id, shape
and source op. (The all-reduces inside distinct `all-reduce-scatter` computations may share a
placeholder channel id: those fusions count one each.)

Bytes are those of the whole array a collective spans on one device: the larger of its operands
and its result (an all-gather's output, a reduce-scatter's input; an all-reduce's, all-to-all's
or collective-permute's operand), summed over a variadic op's arrays. Counts are static: an op
in a loop body (gradient accumulation's scan) counts once, not once per iteration. The same
holds for `dot_flops`.
"""
from __future__ import annotations

import math
import re

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
REDUCE_SCATTER_COMPUTATION = "all-reduce-scatter"

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
               "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16}
# `%name = SHAPE opcode(OPERANDS)...`: the opcode is the first lower-case word followed by "(" after
# a space (layouts such as {1,0:T(8,128)(2,1)S(3)} hold no such word).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s"
                          r"(?P<op>[a-z][a-z0-9\-]*)\((?P<operands>[^)]*)\)(?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\b.*\{\s*$")  # at column 0
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_CALLEES = re.compile(r"(?:to_apply|calls|branch_computations|true_computation|"
                      r"false_computation)=(\{[^}]*\}|%?[\w.\-]+)")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of arrays), e.g. `(f32[8,4]{1,0}, bf16[2])`."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        size = DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
        if size is None:
            continue
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


def _instructions(text: str):
    """(computation, name, shape, opcode, operand names, rest of line) of every instruction."""
    computation = None
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            operands = re.findall(r"%([\w.\-]+)" if "%" in m["operands"] else r"([\w.\-]+)",
                                  m["operands"])
            yield computation, m["name"], m["shape"], m["op"], operands, m["rest"]
            continue
        c = _COMPUTATION.match(line)
        if c and " = " not in line:
            computation = c["name"]


def cross_slice(text: str) -> list[dict]:
    """The transfers between slices of a multislice program as {"kind", "bytes"}: XLA:TPU
    compiles each slice's part of a collective that spans slices as a collective inside the
    slice plus a `send` to the DCN runtime (`_xla_megascale_transfer_type` ALL_REDUCE,
    ALL_GATHER, ...; its operand is the bytes a device sends, in the runtime's [n, 8, 128]
    tiles)."""
    out = []
    for _, _, shape, op, _, rest in _instructions(text):
        kind = re.search(r'_xla_megascale_transfer_type="(\w+)"', rest)
        if op == "send" and kind:
            array = _ARRAY.search(shape)
            out.append({"kind": kind[1].lower().replace("_", "-"),
                        "bytes": shape_bytes(array[0]) if array else 0})
    return out


def collective_ops(text: str) -> list[dict]:
    """Every collective of compiled HLO text as {"kind", "bytes"} (`KINDS`; bytes as the module
    docstring says)."""
    rows = list(_instructions(text))
    sizes = {name: shape_bytes(shape) for _, name, shape, _, _, _ in rows}
    ops = {name: (op, operands, rest) for _, name, _, op, operands, rest in rows}
    out, seen = [], set()

    def add(kind, result_bytes, operands, channel):
        if channel is not None:
            if (kind, channel) in seen:
                return  # the same transfer in another computation
            seen.add((kind, channel))
        out.append({"kind": kind,
                    "bytes": max(result_bytes, sum(sizes.get(o, 0) for o in operands))})

    def channel_of(rest):
        channel = _CHANNEL.search(rest)
        return channel[1] if channel else None

    for computation, name, shape, op, operands, rest in rows:
        if computation and computation.startswith(REDUCE_SCATTER_COMPUTATION):
            continue  # counted at the fusion that calls it
        if op == "fusion":
            called = _CALLS.search(rest)
            if called and called[1].startswith(REDUCE_SCATTER_COMPUTATION):
                add("reduce-scatter", sizes[name], operands, None)
            continue
        for kind in KINDS:
            if op == kind:
                add(kind, sizes[name], operands, channel_of(rest))
            elif op == f"{kind}-done":  # the start's operands, the done's result
                start = ops.get(operands[0], (None, [], "")) if operands else (None, [], "")
                add(kind, sizes[name], start[1], channel_of(start[2]))
    return out


def collectives(text: str) -> dict[str, dict[str, int]]:
    """{kind: {"count": n, "bytes": b}} of the collectives in compiled HLO text, every kind of
    `KINDS` present (0 when absent)."""
    return totals(collective_ops(text))


def totals(ops: list[dict]) -> dict[str, dict[str, int]]:
    """{kind: {"count", "bytes"}} of `collective_ops` (or `cross_slice`) entries, every kind of
    `KINDS` and any other kind they hold."""
    out = {kind: {"count": 0, "bytes": 0} for kind in KINDS}
    for op in ops:
        out.setdefault(op["kind"], {"count": 0, "bytes": 0})["count"] += 1
        out[op["kind"]]["bytes"] += op["bytes"]
    return out


def summary(stats: dict[str, dict[str, int]]) -> str:
    """'all-gather 46 (1.2 MiB), all-reduce 7 (0.3 MiB), ...' of the kinds present."""
    parts = [f"{kind} {s['count']} ({s['bytes'] / 2 ** 20:.2f} MiB)"
             for kind, s in stats.items() if s["count"]]
    return ", ".join(parts) or "none"


def dot_flops(text: str) -> int:
    """2 x multiply-adds of every `dot` that runs in HLO text, from the entry computation down
    through calls, fusions and loops (a `while` body times its trip count when the condition
    compares with one integer constant, as a scan's does). Meant for the lowered program's text:
    XLA:TPU's compiled text writes dots as convolutions."""
    comps: dict[str, list] = {}
    dims: dict[str, list[int]] = {}
    entry = None
    for comp, name, shape, op, operands, rest in _instructions(text):
        arrays = _ARRAY.findall(shape)
        dims[name] = [int(d) for d in arrays[0][1].split(",") if d] if arrays else []
        comps.setdefault(comp, []).append((op, name, operands, rest))
    m = re.search(r"^ENTRY\s+%?([\w.\-]+)", text, re.M)
    entry = m[1] if m else None
    done: dict[str, int] = {}

    def trips(condition: str) -> int:
        constants = []
        for op, name, operands, rest in comps.get(condition, []):
            if op == "constant" and operands and operands[0].isdigit():
                constants.append(int(operands[0]))
        return constants[0] if len(constants) == 1 else 1

    def flops(comp: str) -> int:
        if comp not in done:
            done[comp] = 0  # a recursive reference counts nothing
            total = 0
            for op, name, operands, rest in comps.get(comp, []):
                if op == "dot" and operands:
                    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
                    lhs = dims.get(operands[0], [])
                    k = (math.prod(lhs[int(i)] for i in contracting[1].split(",") if i)
                         if contracting else 1)
                    total += 2 * math.prod(dims[name]) * k
                if op == "while":
                    body = re.search(r"body=%?([\w.\-]+)", rest)
                    cond = re.search(r"condition=%?([\w.\-]+)", rest)
                    if body:
                        total += flops(body[1]) * (trips(cond[1]) if cond else 1)
                    continue
                for callee in _CALLEES.findall(rest):
                    for c in re.findall(r"%?([\w.\-]+)", callee):
                        total += flops(c)
            done[comp] = total
        return done[comp]

    return flops(entry) if entry else sum(flops(c) for c in comps)
