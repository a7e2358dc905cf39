"""The hinas command line: a thin layer over the Python API.

Settings resolve as defaults <- --preset <- --config FILE <- --set key=value and are
validated in full before any work starts; ``hinas config show`` prints them.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import textwrap
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from hinas.engine.settings import PRESETS, EvalConfig, SearchConfig, TrainConfig, resolve
from hinas.errors import ConfigError, HinasError, Interrupted
from hinas.version import __version__

COMMANDS = {"search": SearchConfig, "retrain": TrainConfig, "evaluate": EvalConfig}
RESUMABLE = ("search", "retrain")
RUNNERS = ["torch", "compile", "onnxruntime", "training"]
SHORTCUTS = {"retrain": ("genotype", "genotype file or search run directory"),
             "evaluate": ("model", "retrain run directory, checkpoint, or a baseline: noisy, bicubic")}
DEMO_TIME = {"cpu-demo": "about 12 min on 2 CPU cores", "cpu-hour": "under 60 min on 2 CPU cores, needs HINAS_DATA_ROOT",
             "smoke": "under a minute"}

ABOUT = {
    "demo": ("the whole method in one command: search, draw, retrain, evaluate",
             "Runs search, retrain and evaluate one after the other into DIR/{search,retrain,evaluate}. cpu-demo "
             "and smoke need no download (the photos bundled with scikit-image); cpu-demo adds Set12 to the "
             "evaluation when HINAS_DATA_ROOT holds it. cpu-hour reads the standard sets from HINAS_DATA_ROOT."),
    "search": ("search a cell and a width path with the supernet (SearchConfig)",
               "Writes RUN_DIR/genotype.json (the selected genotype), its drawing, history.json, metrics.json "
               "and a checkpoint per epoch. List the settings with: hinas config show search"),
    "retrain": ("train the network a genotype derives, from scratch (TrainConfig)",
                "Writes RUN_DIR/best.pt (the best validation checkpoint), history.json and metrics.json. "
                "List the settings with: hinas config show retrain"),
    "evaluate": ("PSNR/SSIM of a trained network or a baseline on test sets (EvalConfig)",
                 "Seeded test noise, uint8 outputs, SR measured on Y with the border shaved; writes "
                 "RUN_DIR/metrics.json and per_image.csv. List the settings with: hinas config show evaluate"),
    "restore": ("restore a folder of degraded images (noisy, or low-resolution for SR) with a trained network",
                "Each image under INPUT is restored as it is (no noise is added) into OUTPUT with the same relative name."),
    "show": ("print a genotype and draw it (SVG and PNG; needs Graphviz's dot)",
             "Without dot it prints the text, then fails with the line that installs dot."),
    "prepare": ("gather the data sets a pipeline reads (local copies first, else downloads) and write their manifest",
                "The config section (hinas.studies.pipeline.DataConfig) names the sets of each half of the pipeline."),
    "profile": ("measure a search space's latency table on this machine, for latency-aware search",
                "Times every candidate operation at every width level and the fixed parts in the inference form."),
    "report": ("gather evaluate_*/*/metrics.json of a pipeline into one table", ""),
    "aggregate": ("mean and spread of the metrics of repeated runs (seeds), and whether their genotypes agree", ""),
    "config": ("list presets and print resolved settings with their defaults", ""),
}

EXAMPLES = {
    "demo": ["hinas demo", "hinas demo --preset smoke --out runs/demo-smoke",
             "hinas demo --preset cpu-hour --out runs/cpu-hour"],
    "search": ["hinas search --preset cpu-demo --out runs/search",
               "hinas search --preset cpu-demo --set seed=1 --set space.filters=8 --out runs/search-seed1",
               "hinas search --resume runs/search"],
    "retrain": ["hinas retrain --preset cpu-demo --genotype runs/search --out runs/retrain",
                "hinas retrain --preset smoke --set model=dncnn --out runs/dncnn"],
    "evaluate": ["hinas evaluate --model runs/retrain --set sigmas=[15,25] --out runs/evaluate",
                 "hinas evaluate --preset denoise-gray --model runs/retrain --out runs/evaluate-gray",
                 "hinas evaluate --model bicubic --preset sr --out runs/bicubic"],
    "restore": ["hinas restore runs/retrain noisy/ restored/ --tile 512"],
    "show": ["hinas show runs/search", "hinas show runs/search/genotype.json --filters 20 --out genotype-f20"],
    "prepare": ["hinas prepare --config params.yaml:data --task denoise --out runs/dvc/data/denoise.json"],
    "profile": ["hinas profile --space paper-denoise --size 256 --filters 20 --out runs/latency.json"],
    "report": ["hinas report runs/dvc --json runs/dvc/results.json --markdown runs/dvc/results.md"],
    "aggregate": ["hinas aggregate runs/seeds/* --markdown runs/seeds.md --json runs/seeds.json"],
    "config": ["hinas config show search --preset cpu-demo", "hinas config show evaluate --preset sr --set scales=[4]",
               "hinas config show retrain --preset paper-denoise > retrain.yaml"],
}
"""Every example is parsed, and its settings resolved, by tests/test_cli.py."""


def _epilog(name: str, more: str = "") -> str:
    parts = [textwrap.fill(ABOUT[name][1], 100)] if ABOUT[name][1] else []
    parts += [more] if more else []
    parts.append("examples:\n" + "\n".join(f"  {ex}" for ex in EXAMPLES[name]))
    return "\n\n".join(parts)


def _sub(sub: Any, name: str, more: str = "") -> argparse.ArgumentParser:
    return sub.add_parser(name, help=ABOUT[name][0], description=ABOUT[name][0][0].upper() + ABOUT[name][0][1:] + ".",
                          epilog=_epilog(name, more), formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)


def _settings_options(p: argparse.ArgumentParser, cls: type) -> None:
    p.add_argument("--preset", choices=list(PRESETS[cls]), help="start from a named set of settings")
    p.add_argument("--config", metavar="FILE[:SECTION]", help="YAML file of settings (e.g. the output of hinas config show)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting; the value is YAML (8, [15,25], true); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hinas", description="HiNAS: hierarchical neural architecture search for image denoising and super-resolution.",
        epilog="Run 'hinas COMMAND --help' for a command's options and examples; start with:\n  hinas demo --preset smoke",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"hinas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    demo = _sub(sub, "demo", "Time: " + "; ".join(f"{k} {v}" for k, v in DEMO_TIME.items()) + ".")
    demo.add_argument("--preset", choices=list(DEMO_TIME), default="cpu-demo",
                      help=f"cpu-demo (default, {DEMO_TIME['cpu-demo']}; the embedded photos), cpu-hour "
                      f"({DEMO_TIME['cpu-hour']}: BSDS500 and Train400 to train, Set12 and BSD68 to test) or smoke "
                      f"({DEMO_TIME['smoke']}, a check, not a result)")
    demo.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace finished runs in DIR")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    for name, cls in COMMANDS.items():
        p = _sub(sub, name)
        _settings_options(p, cls)
        p.add_argument("--out", metavar="RUN_DIR", help=f"run directory (default: runs/{name})")
        p.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run in RUN_DIR")
        if name in RESUMABLE:
            p.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR exactly where it "
                           "stopped, with its own settings unless --preset/--config/--set are given")
            p.add_argument("--force", action="store_true", help="resume even though settings or code differ from the run's")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name in SHORTCUTS:
            key, text = SHORTCUTS[name]
            p.add_argument(f"--{key}", help=f"{text} (same as --set {key}=...)")
        if name == "evaluate":
            p.add_argument("--backend", choices=RUNNERS, help="how a trained network runs: its inference form in eager PyTorch "
                           "(torch, the default), torch.compile or ONNX Runtime, or as trained (same as --set backend=...)")
    res = _sub(sub, "restore")
    res.add_argument("model", help="retrain run directory (holding best.pt) or a checkpoint")
    res.add_argument("input", help="folder of degraded images (PNG, JPEG, BMP, TIFF; searched recursively)")
    res.add_argument("output", help="folder for the restored PNGs (same relative names)")
    res.add_argument("--tile", type=int, default=0, help="restore in overlapping tiles of this side to bound memory "
                     "(0: whole images)")
    res.add_argument("--overlap", type=int, default=16, help="tile overlap in pixels (default: %(default)s)")
    res.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    res.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: the idle cores)")
    res.add_argument("--backend", choices=RUNNERS, default="torch", help="as for evaluate (default: %(default)s)")
    res.add_argument("--overwrite", action="store_true", help="replace restored images already in the output folder")
    res.add_argument("--quiet", action="store_true", help="no progress bar")
    from hinas.data.fetch import SOURCES
    from hinas.data.images import NAMED_SETS

    prep = _sub(sub, "prepare", "A set already in the config's root is kept, one in data_root (empty: $HINAS_DATA_ROOT) is "
                "symlinked or copied (link: copy), any other downloaded; then each set's image count and sha256 are written.\n"
                + textwrap.fill(f"sources: {', '.join(SOURCES)}", 100, subsequent_indent="  ") + "\n"
                + textwrap.fill(f"sets: {', '.join(NAMED_SETS)}", 100, subsequent_indent="  "))
    prep.add_argument("--config", metavar="FILE[:SECTION]", required=True,
                      help="settings of hinas.studies.pipeline.DataConfig (root, data_root, link, download, denoise, sr), "
                      "e.g. params.yaml:data")
    prep.add_argument("--task", choices=["denoise", "sr"], help="only the sets of this half of the pipeline (default: both)")
    prep.add_argument("--out", metavar="MANIFEST", required=True, help="JSON file of each set's image count and sha256")
    rep = _sub(sub, "report")
    rep.add_argument("runs", help="the pipeline's run folder")
    rep.add_argument("--json", required=True, help="flat metrics file to write")
    rep.add_argument("--markdown", required=True, help="Markdown table to write")
    agg = _sub(sub, "aggregate")
    agg.add_argument("runs", nargs="+", help="run directories or metrics JSON files")
    agg.add_argument("--json", help="summary file to write")
    agg.add_argument("--markdown", help="Markdown table to write")
    show = _sub(sub, "show")
    show.add_argument("genotype", help="genotype.json or a run directory holding one")
    show.add_argument("--filters", type=int, help="filter multiplier for the parameter count (default: the genotype's)")
    show.add_argument("--out", metavar="STEM", help="drawing path without extension (default: next to the genotype)")
    cfg = _sub(sub, "config", "The output is YAML that --config FILE reads back; each line notes the default where it differs.")
    verbs = cfg.add_subparsers(dest="verb", required=True, metavar="show")
    show_cfg = verbs.add_parser("show", help="print resolved settings", allow_abbrev=False)
    show_cfg.add_argument("kind", choices=list(COMMANDS), help="whose settings")
    show_cfg.add_argument("--preset", help="start from a named set of settings (listed in the output)")
    show_cfg.add_argument("--config", metavar="FILE[:SECTION]", help="YAML file of settings")
    show_cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override one setting")
    prof = _sub(sub, "profile", "The table is JSON, versioned with the device, CPU, precision, torch version and threads "
                "it holds for; a search with latency_weight or latency_target_ms reads it (latency_table).")
    prof.add_argument("--space", default="paper-denoise", help="search-space preset (default: %(default)s)")
    prof.add_argument("--size", type=int, default=256, help="input side in pixels (default: %(default)s)")
    prof.add_argument("--filters", type=int, default=20, help="filter multiplier of the deployed network (default: %(default)s)")
    prof.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    prof.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                      help="what the inference form computes in; bf16 needs native support (default: %(default)s)")
    prof.add_argument("--out", metavar="FILE", required=True, help="table JSON: re-used when it holds here, else measured")
    prof.add_argument("--force", action="store_true", help="measure again even where FILE holds here or was measured elsewhere")
    return parser


def settings(args: argparse.Namespace) -> Any:
    """The validated settings that ``search``/``retrain``/``evaluate`` (or ``config show``) arguments ask for."""
    name = args.kind if args.command == "config" else args.command
    cls = COMMANDS[name]
    overrides = list(args.overrides)
    if name in SHORTCUTS and getattr(args, SHORTCUTS[name][0], None):
        key = SHORTCUTS[name][0]
        overrides.append(f"{key}={getattr(args, key)}")
    if getattr(args, "backend", None):
        overrides.append(f"backend={args.backend}")
    resume = getattr(args, "resume", None)
    if resume and not (args.preset or args.config or overrides):
        return resolve(cls, file=Path(resume) / "config.yaml")  # the run's own settings
    return resolve(cls, args.preset, args.config, overrides)


def _field_docs(cls: type) -> dict[str, str]:
    """The first sentence of each field's docstring (the string under it in the class body), for ``config show``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                text = " ".join(str(after.value.value).split()).replace("``", "")
                docs[node.target.id] = re.split(r"(?<!e\.g)(?<!i\.e)\.\s", text)[0].rstrip(".")  # type: ignore[union-attr]
    return docs


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=1 << 16).strip()[1:-1]


def config_text(cfg: Any, preset: str | None) -> str:
    """Settings as YAML that ``--config`` reads back, each key noting its default (where different) and what it means."""
    cls = type(cfg)
    name = next(k for k, v in COMMANDS.items() if v is cls)
    rows = _rows(cfg, cls(), "")
    width = min(max(len(left) for left, _ in rows), 32)  # a long list value does not push every comment off screen
    return "\n".join([f"# hinas {name} settings ({cls.__name__}): defaults <- preset {preset or '(none)'} <- --config <- --set",
                      f"# presets: {', '.join(PRESETS[cls])}",
                      f"# use: hinas {name} --config FILE (this output is such a FILE)"]
                     + [f"{left:<{width}}  # {note}" if note else left for left, note in rows]) + "\n"


def _rows(obj: Any, default: Any, indent: str) -> list[tuple[str, str]]:
    docs = _field_docs(type(obj))
    rows = []
    for f in fields(obj):
        value, base = getattr(obj, f.name), getattr(default, f.name)
        if is_dataclass(value):
            rows.append((f"{indent}{f.name}:", docs.get(f.name, "")))
            rows += _rows(value, base, indent + "  ")
            continue
        note = [f"default {_yaml_value(_plain(base))}"] if value != base else []
        note += [docs[f.name]] if f.name in docs else []
        rows.append((f"{indent}{f.name}: {_yaml_value(_plain(value))}", "; ".join(note)))
    return rows


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            print(config_text(settings(args), args.preset), end="")
            return 0
        if args.command == "show":
            return _show(args)
        if args.command == "profile":
            return _profile(args)
        if args.command == "demo":
            return _demo(args)
        if args.command in ("prepare", "report", "aggregate"):
            return _pipeline(args)
        if args.command == "restore":
            return _restore(args)
        resume = getattr(args, "resume", None)
        if resume and args.out and Path(args.out) != Path(resume):
            raise ConfigError(f"--resume {resume} continues the run in place; drop --out {args.out}")
        args.out = resume or args.out or f"runs/{args.command}"
        cfg = settings(args)
        progress = not args.quiet
        again = {"resume": bool(resume), "force": args.force} if args.command in RESUMABLE else {}
        if args.command == "search":
            from hinas.engine.distributed import is_main_process
            from hinas.jobs.search import search
            from hinas.viz.render import describe

            result = search(cfg, args.out, overwrite=args.overwrite, progress=progress, **again)
            if not is_main_process():
                return 0
            print(describe(result.genotype))
            print(f"genotype: {result.run_dir / 'genotype.json'} (epoch {result.best_epoch})")
            _print_drawing(result.run_dir / "genotype.svg")
        elif args.command == "retrain":
            from hinas.engine.distributed import is_main_process
            from hinas.jobs.retrain import retrain

            m = retrain(cfg, args.out, overwrite=args.overwrite, progress=progress, **again)
            if not is_main_process():
                return 0
            print(f"best validation PSNR {m['val_psnr']:.2f} dB (input {m['input_psnr']:.2f} dB) at iteration "
                  f"{m['best_iteration']}; {m['params_m']:.3f} M parameters; model: {Path(args.out) / 'best.pt'}")
        else:
            from hinas.jobs.evaluate import evaluate_run

            m = evaluate_run(cfg, args.out, overwrite=args.overwrite, progress=progress)
            for r in m["results"]:
                level = f"sigma {r['sigma']:g}" if r["task"] == "denoise" else f"x{r['scale']}"
                print(f"{r['set']:>14} {level:>9}: PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  "
                      f"(input {r['input_psnr']:.2f} dB, {r['images']} images)")
            print(f"metrics: {Path(args.out) / 'metrics.json'}")
    except Interrupted as err:
        print(f"hinas {args.command}: {err}", file=sys.stderr)
        return 128 + err.signal
    except (HinasError, OSError) as err:  # OSError: a disk that fails outside hinas's own writes (drawings, figures)
        print(f"hinas {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hinas {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _print_drawing(svg: Path) -> None:
    """The drawing's path when the search could draw it; otherwise the warning (a missing ``dot``) on stderr."""
    from hinas.viz.render import warn_no_dot

    if svg.exists():
        print(f"drawing: {svg}")
    else:
        warn_no_dot("no drawing was made (hinas show draws it later)")


def _pipeline(args: argparse.Namespace) -> int:
    from hinas.engine.settings import load_section
    from hinas.studies import pipeline

    if args.command == "prepare":
        from hinas.config import from_dict

        cfg = from_dict(pipeline.DataConfig, load_section(args.config), args.config)
        manifest = pipeline.prepare(cfg, args.task, args.out)
        print(f"manifest: {args.out} ({len(manifest)} sets)")
    elif args.command == "aggregate":
        from hinas.studies import aggregate

        summary = aggregate.aggregate(args.runs)
        aggregate.write(summary, args.json, args.markdown)
        print(aggregate.markdown(summary), end="")
    else:
        flat = pipeline.report(args.runs, args.json, args.markdown)
        print(f"{len(flat)} metrics: {args.json}; table: {args.markdown}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from hinas.hardware import keep_freed_memory, set_threads
    from hinas.infer.folder import restore_folder

    keep_freed_memory()
    set_threads(args.threads)
    written = restore_folder(args.model, args.input, args.output, tile=args.tile, overlap=args.overlap, device=args.device,
                             backend=args.backend, overwrite=args.overwrite, progress=not args.quiet)
    print(f"restored {len(written)} images into {args.output} (PNG: 16-bit where the input had 16 bits, 8-bit otherwise)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hinas.jobs.demo import main_job

    res = main_job(args.out, args.preset, overwrite=args.overwrite, progress=not args.quiet)
    for r in res["results"]:
        print(f"{r['set']:>14} sigma {r['sigma']:g}: PSNR {r['psnr']:.2f} dB (noisy input {r['input_psnr']:.2f} dB)")
    print(f"genotype: {res['genotype']}")
    _print_drawing(Path(res["drawing"]))
    print(f"model: {res['model']} ({res['params_m']:.3f} M parameters)")
    print(f"metrics: {res['metrics']}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from hinas.hardware import keep_freed_memory
    from hinas.infer.latency_table import load_or_measure, measure, save
    from hinas.nas.space import preset

    keep_freed_memory()
    space = preset(args.space)
    if args.force:
        table = measure(space, args.filters, args.size, args.device, log=print, precision=args.precision)
        save(table, args.out)
    else:
        table = load_or_measure(args.out, space, args.filters, args.size, args.device, log=print, precision=args.precision)
    print(f"{'op':>14} " + " ".join(f"x{w:<7g}" for w in space.widths) + " (ms per edge)")
    for op, row in table.ops.items():
        print(f"{op:>14} " + " ".join(f"{v:8.2f}" for v in row))
    print(f"calibration: {table.calibration}\ntable: {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from hinas.nas.genotype import Genotype
    from hinas.viz.render import describe, draw_genotype

    path = Path(args.genotype)
    path = path / "genotype.json" if path.is_dir() else path
    genotype = Genotype.load(path)
    print(describe(genotype, args.filters))
    stem = Path(args.out) if args.out else path.with_suffix("")
    for drawn in draw_genotype(genotype, stem):
        print(f"drawing: {drawn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
