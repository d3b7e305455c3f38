"""Headless Chromium for the HTML report tests: load a page, collect its console output, dump its DOM, screenshot.

Console messages (console.log/error, uncaught exceptions, failed loads) reach Chromium's log as lines with
`:CONSOLE` when it runs with `--enable-logging=stderr`; the report prints none, so any such line is a failure.
`console_works` proves on a page that logs on purpose that this capture works on the installed Chromium.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]
TIMEOUT = 90


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Loaded:
    stdout: str
    console: list[str]  # Chromium's CONSOLE log lines


def run(chromium: str, url: str, *extra: str) -> Loaded:
    with tempfile.TemporaryDirectory(prefix="lossmask-chromium-") as profile:
        result = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return Loaded(result.stdout, console)


def dump_dom(chromium: str, url: str) -> Loaded:
    return run(chromium, url, "--dump-dom")


def screenshot(chromium: str, url: str, png: Path, width: int = 1280, height: int = 1600) -> Loaded:
    loaded = run(chromium, url, f"--screenshot={png}", f"--window-size={width},{height}")
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {loaded.console}")
    return loaded


PIXEL_PAGE = """<!doctype html><html><body><img id="shot" src="data:image/png;base64,{data}"><pre id="out"></pre>
<script>
var img = document.getElementById("shot");
var canvas = document.createElement("canvas");
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
var context = canvas.getContext("2d");
context.drawImage(img, 0, 0);
var pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
var counts = new Map();
for (var i = 0; i < pixels.length; i += 4) {{
  var key = (pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2];
  counts.set(key, (counts.get(key) || 0) + 1);
}}
var most = 0;
counts.forEach(function (n) {{ if (n > most) most = n; }});
document.getElementById("out").textContent = JSON.stringify(
  {{width: canvas.width, height: canvas.height, colors: counts.size, background: most / (pixels.length / 4)}});
</script></body></html>"""


def pixel_stats(chromium: str, png: Path, workdir: Path) -> dict[str, float]:
    """Width, height, number of distinct colors and the share of the most common one, decoded by Chromium."""
    import json
    import re

    page = workdir / "pixels.html"
    page.write_text(PIXEL_PAGE.format(data=base64.b64encode(png.read_bytes()).decode()), encoding="utf-8")
    loaded = dump_dom(chromium, page.as_uri())
    match = re.search(r'<pre id="out">(.*?)</pre>', loaded.stdout, re.S)
    if not match or not match.group(1):
        raise RuntimeError(f"the pixel page produced nothing: {loaded.console}")
    return json.loads(match.group(1).replace("&quot;", '"'))
