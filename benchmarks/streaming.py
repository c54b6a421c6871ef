"""Peak memory of ``sdediff sample -n N --out x.npz`` at N = 1x and 10x the batch size.

The .npz is streamed batch by batch, so memory should not grow with N.  Each run is a
fresh process (peak resident set size from ``getrusage`` of the child); runs of the
two sizes alternate, medians over repeats.

    python benchmarks/streaming.py [--batch-size 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import write_results

SDEDIFF = str(Path(sys.executable).parent / "sdediff")


def peak_mib(num_samples: int, batch_size: int, folder: Path) -> float:
    """Peak RSS (MiB) of one ``sdediff sample`` run on gmm64 (64-D) into an .npz."""
    out = folder / "x.npz"
    size = ["-n", str(num_samples), "--batch-size", str(batch_size)]
    code = subprocess.run(
        [
            SDEDIFF,
            "sample",
            "--model",
            "gmm64",
            "--solver",
            "euler",
            "--steps",
            "4",
            *size,
            "--out",
            out,
        ],
        capture_output=True,
    ).returncode
    assert code == 0
    assert np.load(out)["samples"].shape == (num_samples, 64)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # this run's only child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=50000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    b = args.batch_size
    sizes = {"1x": b, "10x": 10 * b}
    peaks: dict[str, list[float]] = {k: [] for k in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, n in sizes.items():
                peaks[name].append(measure(n, b, Path(tmp)))
    medians = {k: statistics.median(v) for k, v in peaks.items()}
    ratio = medians["10x"] / medians["1x"]
    output_mib = 10 * b * 64 * 4 / 2**20
    table = (
        "| samples | batch | peak RSS (MiB, median) | runs |\n|---|---|---|---|\n"
        + "".join(
            f"| {sizes[k]:,} | {b:,} | {medians[k]:.0f} | {', '.join(f'{p:.0f}' for p in v)} |\n"
            for k, v in peaks.items()
        )
        + f"\n10x / 1x peak: **{ratio:.3f}** (the 10x output alone is {output_mib:.0f} MiB)\n"
    )
    print(table)
    write_results("streaming", {"batch_size": b, "peaks_mib": peaks, "ratio": ratio}, table)


def measure(num_samples: int, batch_size: int, folder: Path) -> float:
    """Peak RSS of the run, measured from a fresh interpreter so each run's peak is its own."""
    here, where = str(Path(__file__).parent), str(folder)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); from streaming import peak_mib; "
        f"from pathlib import Path; print(peak_mib({num_samples}, {batch_size}, Path({where!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


if __name__ == "__main__":
    main()
