"""``python -m minigpt4.tools.data <command>`` (console script ``facegpt-data``): FaceGPT's data tools.

Commands: ``stats``, ``clean``, ``validate``, ``split``, ``synth``, ``render``, ``shards``; ``--help`` on each lists
its flags.
Exit status: 0 on success, 1 when ``validate`` finds problems (or a programming error, with its traceback), 2 on
bad input (a missing file, a malformed annotation file in ``stats``/``clean``/``split``): one line on stderr,
``facegpt-data <command>: <what, where, fix>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from minigpt4.common.errors import run_main
from minigpt4.tools.data_common import discover


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", help="annotation JSON files (instead of, or besides, --root)")
    p.add_argument("--root", help="data root laid out as <root>/{ShareGPTData,GPT4VisionData}/{Annotations,Images}")
    p.add_argument("--image-root", help="image folder for explicit files (default: ../Images beside the file)")


def _inputs(args: argparse.Namespace) -> list:
    """The annotation files named by ``--root`` and/or FILES; a missing one is a usage error (exit status 2)."""
    if not args.root and not args.files:
        raise SystemExit("give --root DIR or one or more annotation files")
    if args.root and not os.path.isdir(args.root):
        raise SystemExit(f"--root {args.root}: folder does not exist (expected the data root holding "
                         "ShareGPTData/ and GPT4VisionData/)")
    missing = [f for f in args.files if not os.path.isfile(f)]
    if missing:
        raise SystemExit(f"annotation file(s) not found: {', '.join(missing)}")
    if args.image_root and not os.path.isdir(args.image_root):
        raise SystemExit(f"--image-root {args.image_root}: folder does not exist")
    return discover(args.root, args.files, args.image_root)


def cmd_stats(args: argparse.Namespace) -> int:
    from minigpt4.tools.data_stats import compute_stats, render, section_chart

    stats = compute_stats(_inputs(args), check_images=args.check_images)
    if args.chart:
        section_chart(stats, args.chart)
    print(json.dumps(stats, indent=1, ensure_ascii=False) if args.json else render(stats))
    if args.chart and not args.json:
        print(f"\nsection chart: {args.chart}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from minigpt4.tools.data_clean import clean_file, report_table

    anns = _inputs(args)
    os.makedirs(args.out_dir, exist_ok=True)
    reports = []
    for ann in anns:
        out = os.path.join(args.out_dir, os.path.splitext(ann.label)[0] + args.suffix + ".json")
        result = clean_file(ann, out, tuple(args.prompt_sections))
        reports.append(result)
        print(f"{ann.path} -> {out}\n{report_table(result)}\n")
    report_path = os.path.join(args.out_dir, "clean_report.json")
    with open(report_path, "w", encoding="utf-8") as fp:
        json.dump(reports, fp, indent=1, ensure_ascii=False)
    print(f"report: {report_path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from minigpt4.tools.data_validate import validate_file

    results = [validate_file(a, decode=args.decode, require_image_token=args.require_image_token)
               for a in _inputs(args)]
    total = sum(len(r["problems"]) for r in results)
    if args.json:
        print(json.dumps(results, indent=1, ensure_ascii=False))
    else:
        for r in results:
            status = "OK" if not r["problems"] else f"{len(r['problems'])} problem(s)"
            print(f"{r['path']}: {r['records']} records, {r['images']} images: {status}")
            for line in r["problems"][: args.max_problems]:
                print(f"  ERROR {line}")
            if len(r["problems"]) > args.max_problems:
                print(f"  ... {len(r['problems']) - args.max_problems} more (--max-problems)")
            for line in r["notes"]:
                print(f"  note: {line}")
        print(f"{total} problem(s)")
    return 1 if total else 0


def cmd_split(args: argparse.Namespace) -> int:
    from minigpt4.tools.data_validate import dump, split_files

    report = split_files(_inputs(args), args.out_dir, args.val_fraction, args.seed, not args.no_stratify)
    print(dump(report))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from minigpt4.tools.data_synth import synthesize

    start = time.perf_counter()
    meta = synthesize(args.out, n=args.n, seed=args.seed, size=args.size, face_fraction=args.face_fraction)
    print(f"wrote {meta['n']} images ({args.size}px) under {args.out} in {time.perf_counter() - start:.1f}s")
    for name, info in meta["files"].items():
        print(f"  {name}: {info['records']} records, {info['unique_images']} images")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from minigpt4.tools.data_render import run

    status, text = run(args)
    print(text)
    return status


def cmd_shards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from minigpt4.tools.data_shards import PackOptions, pack, parse_size, render

    opts = PackOptions(out=Path(args.out), shard_size=parse_size(args.shard_size), sections=args.sections or (),
                       require_image_token=args.require_image_token, one_per_image=args.one_per_image,
                       prompt_sections=tuple(args.prompt_sections))
    start = time.perf_counter()
    manifest = pack(_inputs(args), opts)
    print(render(manifest, opts.out))
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegpt-data", description="FaceGPT data tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stats", help="counts, overlap, sections, refusals, answer lengths, missing images")
    _add_inputs(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--chart", help="write a bar chart PNG of records per section here")
    p.add_argument("--check-images", choices=["none", "exists", "decode"], default="exists")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("clean", help="drop refusals and duplicates, strip disclaimers; writes new files")
    _add_inputs(p)
    p.add_argument("--out-dir", required=True, help="where the cleaned copies and clean_report.json go")
    p.add_argument("--suffix", default=".clean", help="added to each output file name")
    p.add_argument("--prompt-sections", nargs="*", default=["Pre-Prompt"], help="sections passed through as is")
    p.set_defaults(func=cmd_clean)
    p = sub.add_parser("validate", help="every build-time and image check; exit status 1 on problems")
    _add_inputs(p)
    p.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    p.add_argument("--require-image-token", action="store_true", help="a record without <image> is a problem")
    p.add_argument("--max-problems", type=int, default=50, help="problems printed per file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("split", help="by-image train/val split (joint over all inputs, stratified by section)")
    _add_inputs(p)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-stratify", action="store_true", help="do not stratify by section")
    p.set_defaults(func=cmd_split)
    p = sub.add_parser("synth", help="synthetic face data set in the real layout (tests and the demo)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=600, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--face-fraction", type=float, default=0.8, help="share of images that show a face")
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("shards", help="pack the face data into webdataset tar shards + manifest.json (resumable)")
    _add_inputs(p)
    p.add_argument("--out", required=True, help="folder of the shards (shard-000000.tar ...) and manifest.json")
    p.add_argument("--shard-size", default="1GB", help="size a shard closes at (1GB, 500MB, 64KiB, bytes); default 1GB")
    p.add_argument("--sections", nargs="*", help="FaceGPT4Vision sections to pack (default: all); ShareGPT lists "
                   "are always packed whole")
    p.add_argument("--require-image-token", action="store_true", help="a record without <image> is malformed")
    p.add_argument("--one-per-image", action="store_true", help="keep the first record of each image "
                   "(the builders' duplicate_images: one_per_image)")
    p.add_argument("--prompt-sections", nargs="*", default=["Pre-Prompt"], help="sections that are not samples")
    p.set_defaults(func=cmd_shards)
    p = sub.add_parser("render", help="one training sample as the model sees it (image slots, trained spans)")
    from minigpt4.tools.data_render import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_render)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one data command; returns the exit status (2, with one line on stderr, for bad input)."""
    return run_main(_run_command, argv, prog="facegpt-data")


def _run_command(argv: Optional[List[str]]) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda _: args.func(args), None, prog=f"facegpt-data {args.command}")


if __name__ == "__main__":
    sys.exit(main())
