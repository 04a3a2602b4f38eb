"""Webdataset shards vs the JSON path: builder start-up and memory, and reading speed (one run, printed).

    python benchmarks/bench_shards.py                       # 50k and 500k records, then reading speed
    python benchmarks/bench_shards.py --sizes 20000 --read-records 1000 --rounds 3

1. **Start-up.** For each size N: a ShareGPT list of N synthetic records in the real layout (the records reuse a
   few small images), packed with ``facegpt-data shards``' own function; then, each in a fresh process, the
   ``sharegpt_face`` builder on the JSON file and on the shards: seconds in ``build_datasets()`` and the growth of
   the process's peak resident memory during it.
2. **Reading.** The same records and images (``--read-records`` over ``--read-images`` distinct 224-px JPEGs) read
   as loose files (JSON path) and from shards, through the builders' datasets and a DataLoader (batch 8, no
   workers, eval processor at 224 px), in alternating rounds; medians of samples/s and their ratio. The files sit
   on the local disk and in the page cache, so the ratio is the cost of the two read paths on one machine, not the
   latency a shared filesystem adds to opening many small files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARE_FILE = "subset_objects_gpt4vision_100k.json"
PROCS = {"vis_processor": {"train": {"name": "blip2_image_train", "image_size": 224},
                           "eval": {"name": "blip2_image_eval", "image_size": 224}},
         "text_processor": {"train": {"name": "face_text"}, "eval": {"name": "face_text"}}}


def write_records(root: Path, n: int, n_images: int, image_size: int) -> None:
    """``root/ShareGPTData`` with ``n`` records over ``n_images`` synthetic faces (streamed to disk)."""
    from minigpt4.tools.synth_faces import synthetic_face

    images = root / "ShareGPTData" / "Images" / "faces"
    images.mkdir(parents=True, exist_ok=True)
    for k in range(n_images):
        synthetic_face(k, image_size).save(images / f"{k:05d}.jpg", format="JPEG", quality=90)
    ann = root / "ShareGPTData" / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    with open(ann / SHARE_FILE, "w", encoding="utf-8") as fp:
        fp.write("[\n")
        for i in range(n):
            rec = {"id": f"r{i}", "image": f"faces/{i % n_images:05d}.jpg", "conversations": [
                {"from": "human", "value": f"<image>\nDescribe the face of record {i} in detail."},
                {"from": "gpt", "value": f"Record {i}: a calm face with short hair, looking at the camera."}]}
            fp.write(json.dumps(rec) + (",\n" if i < n - 1 else "\n"))
        fp.write("]\n")


def pack_shards(root: Path, out: Path, shard_size: str) -> Dict[str, Any]:
    from minigpt4.tools.data_common import discover
    from minigpt4.tools.data_shards import PackOptions, pack, parse_size

    return pack(discover(str(root)), PackOptions(out=out, shard_size=parse_size(shard_size)))


def builder_config(root: Path, shards: str = "") -> Dict[str, Any]:
    build_info: Dict[str, Any] = {"image_path": str(root / "ShareGPTData" / "Images"),
                                  "ann_path": [str(root / "ShareGPTData" / "Annotations" / SHARE_FILE)]}
    if shards:
        build_info["shards"] = shards
    return {"build_info": build_info, **PROCS}


def _status_kb(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak) of this process in kB, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (this benchmark needs Linux)")


def measure_build(root: Path, shards: str) -> Dict[str, float]:
    """In this process: seconds and peak-RSS growth (MB) of one ``build_datasets()``."""
    from minigpt4.datasets.builders import ShareGPTFaceBuilder

    builder = ShareGPTFaceBuilder(builder_config(root, shards))
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    splits = builder.build_datasets()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    return {"seconds": seconds, "peak_growth_mb": max(0, peak - before) / 1024, "records": len(splits["train"])}


def build_in_child(root: Path, shards: str) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--measure-build", str(root), "--shards", shards]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def startup(sizes: List[int], work: Path, shard_size: str) -> None:
    print("1. builder start-up (each in a fresh process)")
    print(f"{'records':>8}  {'path':<6}  {'build s':>8}  {'peak RSS growth MB':>18}  notes")
    for n in sizes:
        root = work / f"n{n}"
        t0 = time.perf_counter()
        write_records(root, n, n_images=16, image_size=32)
        t1 = time.perf_counter()
        manifest = pack_shards(root, root / "shards", shard_size)
        t2 = time.perf_counter()
        spec = str(root / "shards" / manifest["pattern"])
        for label, shards in (("json", ""), ("shards", spec)):
            r = build_in_child(root, shards)
            note = (f"JSON {os.path.getsize(root / 'ShareGPTData' / 'Annotations' / SHARE_FILE) / 1e6:.1f} MB "
                    f"(written in {t1 - t0:.0f}s)" if label == "json" else
                    f"{len(manifest['shards'])} shards, {manifest['bytes'] / 1e6:.0f} MB (packed in {t2 - t1:.0f}s)")
            assert r["records"] == n, r
            print(f"{n:>8}  {label:<6}  {r['seconds']:>8.2f}  {r['peak_growth_mb']:>18.1f}  {note}", flush=True)


def _samples_per_s(dataset: Any, shards: bool) -> float:
    from torch.utils.data import DataLoader

    if shards:
        dataset.configure(rank=0, world_size=1, num_workers=0, seed=0, pass_index=0, shuffle=False)
    loader = DataLoader(dataset, batch_size=8, num_workers=0, collate_fn=dataset.collater, shuffle=False)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["image_id"])
    return n / (time.perf_counter() - start)


def reading(work: Path, n_records: int, n_images: int, rounds: int) -> None:
    from minigpt4.datasets.builders import ShareGPTFaceBuilder

    root = work / "read"
    write_records(root, n_records, n_images=n_images, image_size=224)
    manifest = pack_shards(root, root / "shards", "64MB")
    json_ds = ShareGPTFaceBuilder(builder_config(root)).build_datasets()["train"]
    shard_ds = ShareGPTFaceBuilder(builder_config(root, str(root / "shards" / manifest["pattern"]))
                                   ).build_datasets()["train"]
    rates: Dict[str, List[float]] = {"loose files": [], "shards": []}
    _samples_per_s(json_ds, False)  # warm-up: page cache and allocator
    for _ in range(rounds):
        rates["loose files"].append(_samples_per_s(json_ds, False))
        rates["shards"].append(_samples_per_s(shard_ds, True))
    print(f"\n2. reading {n_records} records over {n_images} distinct 224-px JPEGs "
          f"({manifest['image_bytes'] / manifest['records'] / 1e3:.1f} kB each), batch 8, no workers, "
          f"{rounds} alternating rounds")
    for label, values in rates.items():
        print(f"  {label:<12} median {statistics.median(values):8.1f} samples/s  "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")
    ratio = statistics.median(rates["shards"]) / statistics.median(rates["loose files"])
    print(f"  shards / loose files: {ratio:.2f}")


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[50_000, 500_000])
    parser.add_argument("--shard-size", default="64MB")
    parser.add_argument("--read-records", type=int, default=2000)
    parser.add_argument("--read-images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--measure-build", help=argparse.SUPPRESS)
    parser.add_argument("--shards", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_build:
        print(json.dumps(measure_build(Path(args.measure_build), args.shards)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        if args.sizes:
            startup(args.sizes, Path(tmp), args.shard_size)
        if args.read_records:
            reading(Path(tmp), args.read_records, args.read_images, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
