"""Cost of the change detection the split rule runs at every DAG build (ltpipe/data/watch.py).

Creates an image-folder data set of ``--files`` files (default 186,000, ImageNet-LT's 115,846
train + 20,000 val + 50,000 test images, rounded) in ``--classes`` class folders under a temporary
directory (``--size`` bytes each; 0: empty files, which cost the same to ``stat``), then times
``data_state`` of it, cold (the source opened and the folders scanned: what one DAG build pays)
and the ``stat`` pass alone, and the ``content`` mode (every file's SHA-256). Also the list-file
form: the same files named by one list file. Prints the median of ``--rounds`` rounds.

    python benchmarks/data_state.py [--files 186000] [--classes 1000] [--size 0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _make(root: Path, files: int, classes: int, size: int) -> list[str]:
    blob = os.urandom(size)
    rels = []
    for i in range(files):
        part = "train" if i % 10 < 7 else "test"
        rel = f"{part}/c{i % classes:04d}/{i:07d}.jpg"
        rels.append(rel)
    for d in {os.path.dirname(r) for r in rels}:
        (root / d).mkdir(parents=True, exist_ok=True)
    for rel in rels:
        with open(root / rel, "wb") as fh:
            fh.write(blob)
    return rels


def _time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    from ltpipe.data import sources
    from ltpipe.data.watch import files_state

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=186_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=0, help="bytes per file (0: empty files)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ltpipe_data_state_"))
    try:
        rels = _make(tmp, args.files, args.classes, args.size)
        (tmp / "train.txt").write_text("".join(f"{r} {i % args.classes}\n"
                                               for i, r in enumerate(rels) if r[:5] == "train"))
        (tmp / "test.txt").write_text("".join(f"{r} {i % args.classes}\n"
                                              for i, r in enumerate(rels) if r[:4] == "test"))

        def cold(cfg):
            sources._state.cache_clear()
            sources._opened.cache_clear()
            return sources.data_state(cfg)

        folder = {"source": "imagefolder", "root": str(tmp)}
        lists = {"source": "listfile", "root": str(tmp)}
        print(f"{args.files} files of {args.size} bytes in {args.classes} classes, median of "
              f"{args.rounds} rounds:")
        t_folder, t_lists = _time(lambda: cold(folder), args.rounds), _time(lambda: cold(lists),
                                                                             args.rounds)
        print(f"  imagefolder, stat (scan + stat):  {t_folder:.2f} s")
        print(f"  listfile, stat (parse + stat):    {t_lists:.2f} s")
        print(f"  stat pass alone:                  "
              f"{_time(lambda: files_state(tmp, rels, 'stat'), args.rounds):.2f} s")
        content = _time(lambda: files_state(tmp, rels, "content"), args.rounds)
        print(f"  content pass (SHA-256 of each):   {content:.2f} s")
        mb = args.files * args.size / 1e6
        if mb:
            print(f"  content throughput:               {mb / content:.0f} MB/s (page cache)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
