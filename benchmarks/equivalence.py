"""Record what a smoke search and retrain produce (genotype, weight digests, metrics without timings) as JSON.

Run it under two commits and compare the files: a refactor that changes no computation gives identical records.
    python benchmarks/equivalence.py OUT.json   (PYTHONPATH=<other checkout> to record another commit)
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

TIMINGS = {"seconds", "time", "elapsed", "cpu_seconds", "cpu_elapsed"}


def _digest(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state.get("model", state.get("state_dict", state))
    h = hashlib.sha256()
    for name, tensor in sorted(weights.items()) if isinstance(weights, dict) else []:
        if torch.is_tensor(tensor):
            h.update(name.encode() + tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def record(root: Path) -> dict:
    import hinas

    try:
        from hinas.engine.settings import SearchConfig, TrainConfig, resolve
        from hinas.jobs.retrain import retrain
        from hinas.jobs.search import search
    except ImportError:  # the flat layout before the sub-packages
        from hinas.search import search
        from hinas.settings import SearchConfig, TrainConfig, resolve
        from hinas.train import retrain
    torch.set_num_threads(1)
    found = search(resolve(SearchConfig, "smoke", overrides=["device=cpu"]), root / "search", progress=False)
    retrain(resolve(TrainConfig, "smoke", overrides=["device=cpu", f"genotype={root / 'search'}"]), root / "retrain",
            progress=False)
    out = {"hinas": str(Path(hinas.__file__).parent), "genotype": json.loads((root / "search" / "genotype.json").read_text()),
           "best_epoch": found.best_epoch}
    for run in ("search", "retrain"):
        out[run] = {"metrics": _strip(json.loads((root / run / "metrics.json").read_text())),
                    "history": _strip(json.loads((root / run / "history.json").read_text())),
                    "checkpoint_weights": _digest(root / run / "checkpoint.pt")}
    out["retrain"]["best_weights"] = _digest(root / "retrain" / "best.pt")
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = record(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {sys.argv[1]} from {result['hinas']}")
