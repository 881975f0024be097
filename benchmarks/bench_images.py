"""ImageProcessor against the plain Pillow way: a 12-megapixel JPEG to fit 800x800.

Run: ``.venv/bin/python benchmarks/bench_images.py [--rounds N] [--noise F] [--quality Q]``.

The source is generated (4000x3000, gradients, shapes and sensor-like noise, saved as a JPEG
of about the size a phone camera writes; ``--noise`` makes it busier, and a busier file
spends more of its time in entropy decoding, which no downscale can skip).

- plain: ``Image.open`` -> ``convert("RGB")`` -> ``resize(fit, LANCZOS)`` -> ``save(JPEG)``.
- ours: ``ImageProcessor((800, 800)).process_sync`` (header checks, reduced-size JPEG decode,
  EXIF orientation, LANCZOS, metadata stripped, JPEG), same quality.

Prints, side by side in one run: median and best time (alternating rounds; the best is the
least disturbed by other processes) and their ratios (target >= 4x faster); peak memory, as
the rise of peak RSS in a fresh subprocess per method (Pillow's pixel buffers bypass
tracemalloc), and the ratio (target: lower); PSNR of ours against the plain result (target
>= 30 dB), computed with Pillow only. A ``reducing_gap=2.0`` row shows
the quality-leaning setting.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageStat

from llm_server.core.implementations import ImageProcessor

BOX = (800, 800)


def make_photo(noise: float, quality: int, seed: int = 7) -> bytes:
    """A 4000x3000 JPEG with smooth gradients, hard edges and grain."""
    rnd = random.Random(seed)
    size = (4000, 3000)
    ramp = Image.linear_gradient("L").resize(size)
    image = Image.merge(
        "RGB", (ramp, ramp.rotate(90).resize(size), Image.radial_gradient("L").resize(size))
    )
    draw = ImageDraw.Draw(image)
    for _ in range(400):
        x, y, r = rnd.randrange(size[0]), rnd.randrange(size[1]), rnd.randrange(10, 300)
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        draw.ellipse((x, y, x + r, y + r // 2), fill=colour)
        line = (rnd.randrange(size[0]), rnd.randrange(size[1]), rnd.randrange(size[0]), y)
        draw.line(line, fill=(rnd.randrange(256),) * 3, width=rnd.randrange(1, 6))
    image = Image.blend(image, Image.effect_noise(size, 40).convert("RGB"), noise)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def plain(data: bytes, quality: int) -> bytes:
    """The straightforward Pillow way."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = min(BOX[0] / image.width, BOX[1] / image.height)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def ours(data: bytes, quality: int, gap: float | None = 1.0) -> bytes:
    """ImageProcessor's blocking core."""
    processor = ImageProcessor(BOX, quality=quality, reducing_gap=gap)
    return processor.process_sync(data)[0].data


METHODS: dict[str, Callable[[bytes, int], bytes]] = {
    "plain": plain,
    "ours": ours,
    "ours_gap2": lambda data, quality: ours(data, quality, 2.0),
}


def psnr(a: bytes, b: bytes) -> float:
    """PSNR in dB of two encoded images of the same size (pure Pillow)."""
    first = Image.open(io.BytesIO(a)).convert("RGB")
    second = Image.open(io.BytesIO(b)).convert("RGB")
    if first.size != second.size:
        raise SystemExit(f"sizes differ: {first.size} vs {second.size}")
    stat = ImageStat.Stat(ImageChops.difference(first, second))
    mse = sum(stat.sum2) / (3 * first.width * first.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def peak_rss_rise_mib(method: str, path: Path, quality: int) -> float:
    """Peak RSS growth of one run of ``method`` in a fresh interpreter, in MiB."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(path), "--quality", str(quality)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip()) / 1024


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB.

    Linux's ``VmHWM`` belongs to the process image, while ``ru_maxrss`` survives ``exec`` and
    would report the parent's peak (the parent generated a 12 MP image) in the child.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1])


def child(method: str, path: str, quality: int) -> None:
    """Run ``method`` once after warming up imports; print the peak RSS rise in KiB."""
    data = Path(path).read_bytes()
    Image.init()
    ImageProcessor().process_sync(Image.new("RGB", (8, 8)))  # load lazy modules first
    before = peak_rss_kib()
    METHODS[method](data, quality)
    print(peak_rss_kib() - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.quality)
        return

    data = make_photo(args.noise, quality=90)
    print(
        f"source: 4000x3000 JPEG, {len(data) / 1e6:.2f} MB "
        f"({len(data) * 8 / 12e6:.2f} bits/pixel), output fits {BOX[0]}x{BOX[1]}, "
        f"quality {args.quality}"
    )
    results = {name: fn(data, args.quality) for name, fn in METHODS.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.rounds):
        for name, fn in METHODS.items():
            started = time.perf_counter()
            fn(data, args.quality)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    bests = {name: min(values) for name, values in times.items()}

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "source.jpg"
        path.write_bytes(data)
        memory = {name: peak_rss_rise_mib(name, path, args.quality) for name in METHODS}

    print(
        f"{'method':<10} {'median ms':>10} {'best ms':>8} {'peak MiB':>9} {'out KB':>7} "
        f"{'PSNR dB':>8}"
    )
    for name in METHODS:
        quality_db = psnr(results[name], results["plain"]) if name != "plain" else math.inf
        print(
            f"{name:<10} {medians[name] * 1000:>10.1f} {bests[name] * 1000:>8.1f} "
            f"{memory[name]:>9.1f} "
            f"{len(results[name]) / 1000:>7.1f} {quality_db:>8.2f}"
        )
    speedup = medians["plain"] / medians["ours"]
    best_speedup = bests["plain"] / bests["ours"]
    memory_ratio = memory["ours"] / memory["plain"]
    quality_db = psnr(results["ours"], results["plain"])
    print(
        f"time ratio plain/ours:    {speedup:.2f}x median, {best_speedup:.2f}x best (target >= 4x)"
    )
    print(f"peak memory ratio ours/plain: {memory_ratio:.3f}  (target < 1)")
    print(f"PSNR ours vs plain:       {quality_db:.2f} dB (target >= 30 dB)")


if __name__ == "__main__":
    main()
