"""Screenshots of the demo's HTML report, as committed here (report-1280.png, report-400.png).

    hessaudit demo --json /tmp/d.json
    hessaudit report /tmp/d.json --out /tmp/d.html
    python docs/img/make_screenshots.py /tmp/d.html docs/img

Needs a headless Chromium (``apt-get install chromium``) and Pillow. A headless window is never
narrower than 500 pixels, so the 400-pixel shot lays the page out in an iframe exactly 400
pixels wide (as tests/report/test_report_html.py does); the white below the page is trimmed and the
images are stored with a 128-colour palette (small files).
"""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
#: (page width, window height): the desktop shot is one screen, the phone shot the whole page.
SHOTS = ((1280, 1600), (400, 3600))


def shoot(browser: str, page: Path, out: Path, width: int, height: int, work: Path) -> None:
    target = page
    if width < 500:
        target = work / f"frame-{width}.html"
        target.write_text(
            '<!DOCTYPE html><html><body style="margin:0;overflow:hidden">'
            f'<iframe style="border:0;display:block;width:{width}px;height:{height}px" '
            f'srcdoc="{html.escape(page.read_text(encoding="utf-8"), quote=True)}"></iframe>'
            "</body></html>",
            encoding="utf-8",
        )
    raw = work / f"raw-{width}.png"
    command = [
        browser, *FLAGS, f"--user-data-dir={work / f'profile-{width}'}", f"--screenshot={raw}",
        f"--window-size={max(width, 500)},{height}", target.resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    image = Image.open(raw).convert("RGB").crop((0, 0, width, height))
    bottom = ImageOps.invert(image).getbbox()[3]  # the last row that is not white
    image = image.crop((0, 0, width, min(height, bottom + 24)))
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main(page: str, folder: str) -> None:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if browser is None:
        sys.exit("error: no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as work:
        for width, height in SHOTS:
            out = Path(folder) / f"report-{width}.png"
            shoot(browser, Path(page), out, width, height, Path(work))
            print(f"{out}: {Image.open(out).size}, {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:3])
