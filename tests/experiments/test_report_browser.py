"""Open the tiny study's report in headless Chromium: every image loads, every section renders.

Chromium is Debian's ``chromium`` package. When /usr/bin/chromium is missing and the tests run
as root, the set-up installs it (``apt-get update && apt-get install -y chromium``); otherwise
the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from logitlab.experiments import records as rec

CHROMIUM = "/usr/bin/chromium"
from .test_study import SECTIONS  # every section of the report, in order

# Appended to a copy of the report: after load, write what rendered into the DOM for --dump-dom.
_PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var shown = Array.from(document.querySelectorAll('section')).filter(function (s) {
    return s.offsetHeight > 0; }).map(function (s) { return s.id; });
  var probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = 'images=' + loaded + '/' + images.length + ';sections=' + shown.join(',');
  document.body.appendChild(probe);
});
</script>"""


def _chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get); "
                    "install Debian's chromium package to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, env=env, timeout=1200)
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"{CHROMIUM} is missing and `apt-get install -y chromium` failed: {error}")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


def _run(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--hide-scrollbars"]
        return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(tiny_run):
    binary = _chromium()
    report = tiny_run.run_dir / rec.REPORT
    html = report.read_text()
    images = html.count("<img ")
    probe = tiny_run.run_dir / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE + "</body>"))
    dom = _run(binary, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    match = re.search(r"images=(\d+)/(\d+);sections=([\w,]*)", dom.stdout)
    assert match, f"no probe in the DOM; chromium said: {dom.stderr[-2000:]}"
    loaded, total, shown = int(match[1]), int(match[2]), match[3].split(",")
    assert total == images and images >= 4
    assert loaded == total, f"only {loaded} of {total} images loaded"
    assert shown == SECTIONS
    screenshot = report.with_name("report.png")
    shot = _run(binary, "--window-size=1200,4000", f"--screenshot={screenshot}", report.as_uri())
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    assert Path(screenshot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
