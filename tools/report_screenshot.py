"""Quantize the built-in demo, write its report and take a screenshot of it in headless Chromium (for review).

    python tools/report_screenshot.py [--output-dir /tmp/report_demo] [--png docs/report.png]

Needs Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from pytorch_nndct.cli import main as cli


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 2400) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
         f"--screenshot={png}", html.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="/tmp/report_demo")
    parser.add_argument("--png", default="docs/report.png")
    args = parser.parse_args()
    for argv in (["quantize", "--quiet"], ["report", "--quiet"]):
        if cli([*argv, "--output-dir", args.output_dir]) != 0:
            return 1
    screenshot(Path(args.output_dir) / "report.html", Path(args.png))
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
