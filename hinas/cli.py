"""``hinas demo | search | retrain | evaluate | restore | show | profile | prepare | report | aggregate``: a thin command line over the Python API.

Settings resolve as defaults <- ``--preset`` <- ``--config FILE`` <- ``--set key=value``
and are validated in full before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hinas.engine.settings import PRESETS, EvalConfig, SearchConfig, TrainConfig, resolve
from hinas.errors import ConfigError, HinasError, Interrupted

COMMANDS = {"search": SearchConfig, "retrain": TrainConfig, "evaluate": EvalConfig}
RESUMABLE = ("search", "retrain")
RUNNERS = ["torch", "compile", "onnxruntime", "training"]
SHORTCUTS = {"retrain": ("genotype", "genotype file or search run directory"),
             "evaluate": ("model", "retrain run directory, checkpoint, or a baseline: noisy, bicubic")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hinas", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,search,retrain,evaluate,restore,show,profile,prepare,report,aggregate}")
    demo = sub.add_parser("demo", help="the main job on the embedded photos: search, draw, retrain, evaluate", allow_abbrev=False)
    demo.add_argument("--preset", choices=["cpu-demo", "smoke"], default="cpu-demo", help="cpu-demo (~12 min) or smoke (seconds)")
    demo.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace finished runs in DIR")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    for name, cls in COMMANDS.items():
        p = sub.add_parser(name, help=f"{name} (settings: {cls.__name__})", allow_abbrev=False)
        p.add_argument("--preset", choices=list(PRESETS[cls]), help="start from a named set of settings")
        p.add_argument("--config", metavar="FILE", help="YAML file of settings")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. --set epochs=10 --set space.filters=8 (repeatable)")
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
    res = sub.add_parser("restore", help="restore a folder of degraded images (noisy, or low-resolution for SR) with a trained network",
                         allow_abbrev=False)
    res.add_argument("model", help="retrain run directory (holding best.pt) or a checkpoint")
    res.add_argument("input", help="folder of degraded images (PNG, JPEG, BMP, TIFF; searched recursively)")
    res.add_argument("output", help="folder for the restored PNGs (same relative names)")
    res.add_argument("--tile", type=int, default=0, help="restore in overlapping tiles of this side to bound memory (0: whole images)")
    res.add_argument("--overlap", type=int, default=16, help="tile overlap in pixels (default: %(default)s)")
    res.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    res.add_argument("--backend", choices=RUNNERS, default="torch", help="as for evaluate (default: %(default)s)")
    res.add_argument("--overwrite", action="store_true", help="replace restored images already in the output folder")
    res.add_argument("--quiet", action="store_true", help="no progress bar")
    prep = sub.add_parser("prepare", help="fetch data sources and write a manifest of the sets a pipeline reads", allow_abbrev=False)
    prep.add_argument("--config", metavar="FILE[:SECTION]", required=True, help="mapping with 'fetch' (sources) and 'sets'")
    prep.add_argument("--out", metavar="MANIFEST", required=True)
    rep = sub.add_parser("report", help="gather evaluate_*/*/metrics.json of a pipeline into one table", allow_abbrev=False)
    rep.add_argument("runs", help="the pipeline's run folder")
    rep.add_argument("--json", required=True, help="flat metrics file to write")
    rep.add_argument("--markdown", required=True, help="Markdown table to write")
    agg = sub.add_parser("aggregate", help="mean and spread of the metrics of repeated runs (seeds), and whether their genotypes agree",
                         allow_abbrev=False)
    agg.add_argument("runs", nargs="+", help="run directories or metrics JSON files")
    agg.add_argument("--json", help="summary file to write")
    agg.add_argument("--markdown", help="Markdown table to write")
    show = sub.add_parser("show", help="print a genotype and draw it (SVG and PNG)", allow_abbrev=False)
    show.add_argument("genotype", help="genotype.json or a run directory holding one")
    show.add_argument("--filters", type=int, help="filter multiplier for the parameter count (default: the genotype's)")
    show.add_argument("--out", metavar="STEM", help="drawing path without extension (default: next to the genotype)")
    prof = sub.add_parser("profile", help="measure a search space's latency table on this machine (for latency-aware search)",
                          allow_abbrev=False)
    prof.add_argument("--space", default="paper-denoise", help="search-space preset (default: %(default)s)")
    prof.add_argument("--size", type=int, default=256, help="input side in pixels (default: %(default)s)")
    prof.add_argument("--filters", type=int, default=20, help="filter multiplier of the deployed network (default: %(default)s)")
    prof.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    prof.add_argument("--out", metavar="FILE", required=True, help="table JSON: re-used when it holds here, else measured")
    prof.add_argument("--force", action="store_true", help="measure again even where FILE holds here or was measured elsewhere")
    return parser


def describe(genotype, filters: int | None = None) -> str:
    """A text summary: width path, cells, size of the derived network."""
    from hinas.nas.complexity import count_flops, count_params
    from hinas.nas.network import Network
    from hinas.viz.render import state_name

    space = genotype.space
    net = Network(genotype, filters)
    lines = [f"{space.task} network, {space.in_channels} channel(s)" + (f", x{space.scale}" if space.task == "sr" else ""),
             "width path: " + " -> ".join(["stem"] + [f"x{space.widths[k]:g}" for k in genotype.path])]
    for layer, cell in enumerate(genotype.cells, start=1):
        lines.append(f"layer {layer}:")
        lines += [f"  node {n}: " + " + ".join(f"{op}({state_name(s)})" for op, s in node) for n, node in enumerate(cell)]
    size = 256 // space.scale
    lines.append(f"F={net.filters}: {count_params(net) / 1e6:.3f} M parameters, "
                 f"{count_flops(net, (1, space.in_channels, size, size)) / 1e9:.2f} GFLOP for a {size}x{size} input")
    if "latency_ms" in genotype.meta:
        lines.append(f"predicted latency: {genotype.meta['latency_ms']} ms ({genotype.meta.get('latency_for', 'unknown setting')})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
        cls = COMMANDS[args.command]
        overrides = list(args.overrides)
        if args.command in SHORTCUTS and getattr(args, SHORTCUTS[args.command][0]):
            key = SHORTCUTS[args.command][0]
            overrides.append(f"{key}={getattr(args, key)}")
        if args.command == "evaluate" and args.backend:
            overrides.append(f"backend={args.backend}")
        resume = getattr(args, "resume", None)
        if resume and args.out and Path(args.out) != Path(resume):
            raise ConfigError(f"--resume {resume} continues the run in place; drop --out {args.out}")
        args.out = resume or args.out or f"runs/{args.command}"
        if resume and not (args.preset or args.config or overrides):
            cfg = resolve(cls, file=Path(resume) / "config.yaml")  # the run's own settings
        else:
            cfg = resolve(cls, args.preset, args.config, overrides)
        progress = not args.quiet
        again = {"resume": bool(resume), "force": args.force} if args.command in RESUMABLE else {}
        if args.command == "search":
            from hinas.engine.distributed import is_main_process
            from hinas.jobs.search import search

            result = search(cfg, args.out, overwrite=args.overwrite, progress=progress, **again)
            if not is_main_process():
                return 0
            print(describe(result.genotype))
            print(f"genotype: {result.run_dir / 'genotype.json'} (epoch {result.best_epoch}); drawing: {result.run_dir / 'genotype.svg'}")
        elif args.command == "retrain":
            from hinas.engine.distributed import is_main_process
            from hinas.jobs.retrain import retrain

            m = retrain(cfg, args.out, overwrite=args.overwrite, progress=progress, **again)
            if not is_main_process():
                return 0
            print(f"best validation PSNR {m['val_psnr']:.2f} dB (input {m['input_psnr']:.2f} dB) at iteration "
                  f"{m['best_iteration']}; {m['params_m']:.3f} M parameters; model: {Path(args.out) / 'best.pt'}")
        else:
            from hinas.hardware import keep_freed_memory
            from hinas.jobs.evaluate import evaluate_run

            keep_freed_memory()
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


def _pipeline(args: argparse.Namespace) -> int:
    from hinas.engine.settings import load_section
    from hinas.studies import pipeline

    if args.command == "prepare":
        section = load_section(args.config)
        manifest = pipeline.prepare(list(section.get("fetch", [])), list(section.get("sets", [])), section.get("root") or None, args.out)
        counts = ", ".join(f"{name}: {info['images']} images" for name, info in manifest["sets"].items())
        print(f"manifest: {args.out} ({counts})")
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
    from hinas.hardware import keep_freed_memory
    from hinas.infer.folder import restore_folder

    keep_freed_memory()
    written = restore_folder(args.model, args.input, args.output, tile=args.tile, overlap=args.overlap, device=args.device,
                             backend=args.backend, overwrite=args.overwrite, progress=not args.quiet)
    print(f"restored {len(written)} images into {args.output}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hinas.jobs.demo import main_job

    res = main_job(args.out, args.preset, overwrite=args.overwrite, progress=not args.quiet)
    for r in res["results"]:
        print(f"{r['set']:>14} sigma {r['sigma']:g}: PSNR {r['psnr']:.2f} dB (noisy input {r['input_psnr']:.2f} dB)")
    print(f"genotype: {res['genotype']}\ndrawing: {res['drawing']}\nmodel: {res['model']} ({res['params_m']:.3f} M parameters)")
    print(f"metrics: {res['metrics']}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from hinas.hardware import keep_freed_memory
    from hinas.infer.latency_table import load_or_measure, measure, save
    from hinas.nas.space import preset

    keep_freed_memory()
    space = preset(args.space)
    if args.force:
        table = measure(space, args.filters, args.size, args.device, log=print)
        save(table, args.out)
    else:
        table = load_or_measure(args.out, space, args.filters, args.size, args.device, log=print)
    print(f"{'op':>14} " + " ".join(f"x{w:<7g}" for w in space.widths) + " (ms per edge)")
    for op, row in table.ops.items():
        print(f"{op:>14} " + " ".join(f"{v:8.2f}" for v in row))
    print(f"calibration: {table.calibration}\ntable: {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from hinas.nas.genotype import Genotype
    from hinas.viz.render import draw_genotype

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
