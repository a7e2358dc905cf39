"""Measuring the latency table of a search space on this device, in the inference form, and guarding its reuse.

Why measure parts inside whole networks: the inference form fuses across a network (activations computed once
per feature, convolutions merged across edges, layouts chosen per cell), so an operation timed alone is not what
it costs in place. Every part is timed by hooks on the inference form of small probe networks: for each
operation, networks whose cells use only it, along a path at level 0 and one climbing to the widest level; and
identity-only networks ending at each level (the decoders, the endpoints). An edge's cost is its cell's time
above an identity-only cell's, per edge. Then a few random networks (seeds of their own) calibrate: the mean
amount by which their measured latency exceeds the table's sum is added to every cell's fixed cost, which absorbs
what part-by-part costs miss (mixed cells merge fewer convolutions than uniform ones; layouts between parts).

On the CPU with one thread, times are the thread's CPU time (:func:`clock`), which does not count time the
thread waits for the core. It does not shield a table from a busy neighbour, though: on the 2-core test machine
a search on the other core stretched every part by up to 2x (shared caches and memory bandwidth), so measure on
an otherwise idle machine (``hinas.studies.results`` runs its latency jobs alone). Every time is the fastest of
``repeats`` runs, and a part that several probes run alike (the stem, a decoder, a scaler, a cell) takes its
fastest instance: the figure least disturbed by other load. Only the time between parts (``glue``) is a median,
being a difference of two times.

A table is valid only where it was measured: same device and CPU model, precision, torch version, threads,
input size and space (:func:`check`); another is refused, never silently used.
"""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hinas.errors import ConfigError
from hinas.files import atomic_write_bytes
from hinas.hardware import keep_freed_memory, machine, pick_device
from hinas.infer.backends import InferenceModel, bf16_native
from hinas.nas.genotype import Genotype, random_genotype
from hinas.nas.latency import FIXED_PARTS, LatencyTable, endpoint_is_cell, network_latency, out_width, scaler_key, scaler_pairs
from hinas.nas.layers import STEM_CHANNELS
from hinas.nas.network import Network
from hinas.nas.ops import get_op
from hinas.nas.space import SearchSpace

TablePrecision = Literal["float32", "bf16"]
"""What the inference form computes in while a table is measured (one table holds for one)."""
CALIBRATION_SEED = 10_000
"""Seeds of the calibration networks start here, away from the small seeds benchmarks draw their genotypes from."""
MAX_BYTES = 1 << 20


def clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """How latency is timed: on the CPU with one thread, the CPU time of the thread that runs every kernel (time
    other processes take the core for is not counted, though they still slow it through shared caches); else wall
    time. Returns its name and the clock in seconds."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "thread_time", time.thread_time
    return "wall", time.perf_counter


def environment(device: torch.device, size: int, precision: TablePrecision = "float32") -> dict[str, Any]:
    """What a latency depends on besides the network: where and how it runs, in which precision, on what input,
    timed how."""
    return {"device": device.type, "device_name": machine(device), "precision": precision,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "size": size, "clock": clock(device)[0]}


def check(table: LatencyTable, space: SearchSpace, filters: int, env: dict[str, Any]) -> None:
    """Refuse a table measured elsewhere: another device, precision, torch version, thread count, size, clock, space or F."""
    table.check_space(space)
    wrong = [f"{k} {table.env.get(k)!r} (here {v!r})" for k, v in env.items() if table.env.get(k) != v]
    if table.space.filters != filters:
        wrong.append(f"filters {table.space.filters} (here {filters})")
    if wrong:
        raise ConfigError("latency table was measured for " + ", ".join(wrong) + "; it does not hold here: measure "
                          "it again with `hinas profile` (or delete it and let the search measure it)")


def load(path: str | Path, space: SearchSpace, filters: int, size: int, device: str = "cpu",
         precision: TablePrecision = "float32") -> LatencyTable:
    """A stored table, checked against this machine (:func:`check`)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError("too large for a latency table")
        table = LatencyTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise ConfigError(f"{path}: {err}") from None
        raise ConfigError(f"{path}: cannot read latency table ({err})") from None
    dev = pick_device(device)
    try:
        check(table, space, filters, environment(dev, size, precision))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return table


def save(table: LatencyTable, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (table.to_json() + "\n").encode())
    return path


def load_or_measure(path: str | Path, space: SearchSpace, filters: int, size: int, device: str = "cpu",
                    log: Callable[[str], None] = lambda s: None, precision: TablePrecision = "float32") -> LatencyTable:
    """The table at ``path`` when it holds here; measured and written there when there is none."""
    if Path(path).exists():
        return load(path, space, filters, size, device, precision)
    log(f"measuring the latency table into {path}")
    table = measure(space, filters, size, device, log=log, precision=precision)
    save(table, path)
    return table


# --- measuring ----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest_ms(run: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int) -> float:
    """Milliseconds of ``run(x)`` on the table's clock (:func:`clock`), the fastest of ``repeats`` after a warm-up."""
    now = clock(x.device)[1]
    best = float("inf")
    with torch.inference_mode():
        for run_index in range(repeats + 1):
            _sync(x.device)
            start = now()
            run(x)
            _sync(x.device)
            best = best if run_index == 0 else min(best, now() - start)
    return 1e3 * best


def plain_forms(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """A network that has no inference form of its own (DnCNN) as plain PyTorch runs it fastest: float32 NCHW,
    float32 channels_last and, where the device computes it natively, bf16 channels_last (input converted,
    output float32). Its best form is the fastest of these."""
    device = next(model.parameters()).device
    forms = {"float32 NCHW": model}
    layouts = [("float32 channels_last", torch.float32)]
    if bf16_native(device):
        layouts.append(("bf16 channels_last", torch.bfloat16))
    for name, dtype in layouts:
        forms[name] = Converted(model, dtype)
    return forms


class Converted(torch.nn.Module):
    """A copy of ``model`` converted to ``dtype`` and ``layout``, fed inputs converted alike and returning float32:
    what plain PyTorch offers to make a network without an inference form of its own run faster."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype,
                 layout: torch.memory_format = torch.channels_last) -> None:
        super().__init__()
        self.model, self.dtype, self.layout = copy.deepcopy(model).to(dtype, memory_format=layout), dtype, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype).contiguous(memory_format=self.layout)).float()


def time_network(genotype: Genotype, filters: int, x: torch.Tensor, repeats: int,
                 precision: TablePrecision = "float32") -> tuple[float, dict[str, float]]:
    """Milliseconds of the inference form's forward pass in ``precision``, and of each of its top-level parts
    (``cells.0``, ``scale1.2``, ``decoder`` ...), each the fastest of ``repeats`` runs after one warm-up run."""
    device = x.device
    now = clock(device)[1]
    model = InferenceModel(Network(genotype, filters).eval().to(device), precision=precision)
    parts: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}

    def begin(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            _sync(device)
            started[name] = now()
        return hook

    def end(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            _sync(device)
            parts[name].append(now() - started[name])
        return hook

    hooks = []
    for name, child in model.fast.named_children():
        for sub, module in ([(f"{name}.{i}", m) for i, m in enumerate(child)] if isinstance(child, torch.nn.ModuleList)
                            else [(name, child)]):
            hooks += [module.register_forward_pre_hook(begin(sub)), module.register_forward_hook(end(sub))]
    totals = []
    try:
        for run in range(repeats + 1):
            _sync(device)
            t0 = now()
            model(x)
            _sync(device)
            totals.append(now() - t0)
            if run == 0:
                parts.clear()
    finally:
        for h in hooks:
            h.remove()
    return 1e3 * min(totals[1:]), {k: 1e3 * min(v) for k, v in parts.items()}


def uniform_genotype(space: SearchSpace, op: str, path: tuple[int, ...]) -> Genotype:
    """Every cell runs ``op`` on every edge, node i reading states i and i + 1 (a chain, as random cells often are)."""
    cell = tuple(((op, i), (op, i + 1)) for i in range(space.nodes))
    return Genotype(space, path, (cell,) * space.layers, {"source": "latency probe"})


def _probe_paths(space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """Paths of the probes: level 0 throughout, climbing to the widest level, and ending at each level from level 0."""
    L, top = space.layers, space.levels - 1
    paths = {"zero": (0,) * L, "up": tuple(min(i + 1, top) for i in range(L))}
    for k in range(1, min(top, L) + 1):
        paths[f"end{k}"] = tuple(max(0, k - (L - 1 - i)) for i in range(L))
    return paths


def _layer_inputs(space: SearchSpace, path: tuple[int, ...]) -> list[tuple[int, int]]:
    """(width of h0, width of h1) each layer's two scalers read."""
    widths = [STEM_CHANNELS, STEM_CHANNELS]
    out = []
    for level in path:
        out.append((widths[-1], widths[-2]))
        widths.append(out_width(space, level))
    return out


def measure(space: SearchSpace, filters: int = 20, size: int = 256, device: str = "cpu", repeats: int = 3,
            calibrate: int = 8, log: Callable[[str], None] = lambda s: None,
            precision: TablePrecision = "float32") -> LatencyTable:
    """Measure the latency table of ``space`` at filter multiplier ``filters`` on a ``size`` x ``size`` input.

    Runs in the inference form in ``precision`` (bf16 needs native support: refused elsewhere) on ``device``
    with the current torch thread count; one table holds for one precision. Measure on an otherwise idle machine:
    here, another process on the second core stretched every part by up to 2x, thread CPU time included. about 25 networks of
    ``repeats`` + 1 runs each (about a minute for the paper's denoising space at F=20 on two cores). The
    global random state is left as it was (the networks' random weights are drawn from a forked one).
    """
    dev = pick_device(device)
    sp = space.replace(filters=filters)
    keep_freed_memory()  # as inference runs it: without, fresh pages for every feature map over-predicted by 10-27%
    started = time.perf_counter()
    env = environment(dev, size, precision)
    ops = [op for op in sp.ops if not get_op(op).is_zero]
    if "identity" not in ops:
        raise ConfigError("latency table: the space needs the identity op (identity-only probes measure the cells' overhead)")
    cell_times: dict[tuple[str, int], list[float]] = defaultdict(list)
    scaler_times: dict[str, list[float]] = defaultdict(list)
    decoder: dict[int, list[float]] = defaultdict(list)
    fixed: dict[str, list[float]] = defaultdict(list)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        x = torch.rand(1, sp.in_channels, size, size, device=dev)
        for name, path in _probe_paths(sp).items():
            for op in ops if name in ("zero", "up") else ["identity"]:
                total, parts = time_network(uniform_genotype(sp, op, path), filters, x, repeats, precision)
                log(f"probe {op} on path {list(path)}: {total:.1f} ms")
                _collect(sp, path, parts, total, cell_times, op, scaler_times, decoder, fixed)
        calibration = [random_genotype(sp, CALIBRATION_SEED + i) for i in range(calibrate)]
        measured = [time_network(g, filters, x, repeats, precision) for g in calibration]
    table = _assemble(sp, ops, cell_times, scaler_times, decoder, fixed, env)
    table = _calibrated(table, calibration, measured)
    table.calibration["seconds"] = round(time.perf_counter() - started, 1)
    return table


def _collect(sp: SearchSpace, path: tuple[int, ...], parts: dict[str, float], total: float, cell_times: dict, op: str,
             scaler_times: dict, decoder: dict, fixed: dict) -> None:
    """File one probe's part times under the table entries they measure."""
    for i, (level, (in0, in1)) in enumerate(zip(path, _layer_inputs(sp, path))):
        cell_times[(op, level)].append(parts[f"cells.{i}"])
        c = sp.channels(level)
        scaler_times[scaler_key(in0, c)].append(parts[f"scale0.{i}"])
        scaler_times[scaler_key(in1, c)].append(parts[f"scale1.{i}"])
    decoder[path[-1]].append(parts["decoder"])
    fixed["stem"].append(parts["stem1"] + parts["stem2"])
    fixed["endpoint_cell" if endpoint_is_cell(path) else "endpoint_reduce"].append(parts["proj"])
    fixed["glue"].append(total - sum(parts.values()))


def _by_level(values: dict[int, list[float]], levels: int) -> tuple[float, ...]:
    """Fastest per level; a level no network of the space can reach (deeper than its layers) repeats the one below."""
    out: list[float] = []
    for k in range(levels):
        out.append(min(values[k]) if values.get(k) else out[-1])
    return tuple(out)


def _assemble(sp: SearchSpace, ops: list[str], cell_times: dict, scaler_times: dict, decoder: dict, fixed: dict,
              env: dict[str, Any]) -> LatencyTable:
    """The uncalibrated table: an edge costs its uniform cell's time above the identity-only cell's, per edge."""
    K, edges = sp.levels, 2 * sp.nodes
    cell = _by_level({k: cell_times[("identity", k)] for k in range(K)}, K)
    table_ops = {}
    for op in ops:
        per_cell = _by_level({k: cell_times[(op, k)] for k in range(K)}, K)
        table_ops[op] = tuple(0.0 if op == "identity" else max(0.0, (t - c) / edges) for t, c in zip(per_cell, cell))
    seen = {key: min(v) for key, v in scaler_times.items()}
    # scalers no probe ran: a 1x1 convolution's time, fitted as a + b * inputs * outputs on the ones that ran
    sizes = np.array([[1.0, np.prod([int(c) for c in key.split("->")])] for key in seen])
    coef = np.linalg.lstsq(sizes, np.array(list(seen.values())), rcond=None)[0]
    scalers = {key: seen.get(key, float(coef @ [1.0, np.prod([int(c) for c in key.split("->")])]))
               for key in scaler_pairs(sp)}
    stats = {k: float(np.median(v)) if k == "glue" else min(v) for k, v in fixed.items()}
    # an endpoint that no network of the space has (a one-layer space never reads a cell's) costs nothing
    return LatencyTable(sp, table_ops, cell, scalers, _by_level(decoder, K), {k: stats.get(k, 0.0) for k in FIXED_PARTS}, env)


def _calibrated(table: LatencyTable, genotypes: list[Genotype], measured: list[tuple[float, dict[str, float]]]) -> LatencyTable:
    """Add to every cell's fixed cost the mean shortfall per cell of the table's sum on the calibration networks."""
    short = [total - network_latency(table, g) for g, (total, _) in zip(genotypes, measured)]
    offset = float(np.mean(short)) / table.space.layers if short else 0.0
    fitted = LatencyTable(table.space, table.ops, tuple(c + offset for c in table.cell), table.scalers, table.decoder,
                          table.fixed, table.env)

    def errors(t: LatencyTable) -> list[float]:
        return [abs(network_latency(t, g) / total - 1) * 100 for g, (total, _) in zip(genotypes, measured)]

    report = {"networks": len(genotypes), "seeds": [g.meta["seed"] for g in genotypes], "cell_offset_ms": round(offset, 3),
              "median_error_pct_before": _median(errors(table)), "median_error_pct_after": _median(errors(fitted))}
    return LatencyTable(fitted.space, fitted.ops, fitted.cell, fitted.scalers, fitted.decoder, fitted.fixed, fitted.env, report)


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 2) if values else None
