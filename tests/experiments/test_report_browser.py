"""Open the tiny study's report in headless Chromium: every image loads, every section renders.

Chromium is Debian's ``chromium`` package (tests/_browser.py finds it; CI's .ci/run installs it
when missing; elsewhere the test is skipped with the reason).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _browser import chromium, run_headless
from logitlab.experiments import records as rec

from .test_study import SECTIONS  # every section of the report, in order

pytestmark = pytest.mark.slow  # a study end to end, then headless Chromium

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


def test_report_renders_in_headless_chromium(tiny_run):
    binary = chromium()
    report = tiny_run.run_dir / rec.REPORT
    html = report.read_text()
    images = html.count("<img ")
    probe = tiny_run.run_dir / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE + "</body>"))
    dom = run_headless(binary, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    match = re.search(r"images=(\d+)/(\d+);sections=([\w,]*)", dom.stdout)
    assert match, f"no probe in the DOM; chromium said: {dom.stderr[-2000:]}"
    loaded, total, shown = int(match[1]), int(match[2]), match[3].split(",")
    assert total == images and images >= 4
    assert loaded == total, f"only {loaded} of {total} images loaded"
    assert shown == SECTIONS
    screenshot = report.with_name("report.png")
    shot = run_headless(binary, "--window-size=1200,4000", f"--screenshot={screenshot}", report.as_uri())
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    assert Path(screenshot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
