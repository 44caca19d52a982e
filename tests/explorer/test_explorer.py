"""The explorer page, in headless Chromium, against logitlab's Python functions.

The page is loaded with fixed inputs (the URL fragment), every number it shows is read from the
DOM (``data-key`` / ``data-value`` at full precision) and compared with the library to 1e-6: every
map, every loss and its gradient by autograd, and H(p, q) = H(p) + KL(p ‖ q), on a grid with
``-inf`` entries, an all ``-inf`` row, ties, huge logits and every option. Then real input events
(a drag on the bars, clicks and key presses on sliders and buttons, each guided view) must move
the displayed values to the library's values for the new inputs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import logitlab
from _browser import Browser, chromium
from logitlab import cli
from logitlab.explorer import explorer_html, write_explorer
from logitlab.losses import cross_entropy as ce
from logitlab.losses import divergences as dv
from logitlab.losses import fenchel_young as fy
from logitlab.registry import get_normalizer

pytestmark = pytest.mark.slow  # headless Chromium

INF = math.inf
TOL = 1e-6
MAPS = ["softmax", "standard", "sparsemax", "entmax15", "entmax", "spherical_softmax", "taylor_softmax", "sigmoid"]
DEFAULTS = dict(T=1.0, alpha=1.5, y=0, eps=0.0, gamma=2.0, pos="softplus", order=2, dn="softmax", units="nats")


# ---- what the library says ----
def _normalizer_params(name: str, case: dict) -> dict:
    if name == "standard":
        return {"positivity": None if case["pos"] == "none" else case["pos"]}
    if name == "entmax":
        return {"alpha": case["alpha"]}
    if name == "taylor_softmax":
        return {"order": case["order"]}
    return {}


def expected(case: dict) -> dict[str, float | str]:
    """Every key the page shows -> the library's value ('error' where the library raises)."""
    case = {**DEFAULTS, **case}
    logits = torch.tensor(case["logits"], dtype=torch.float64)
    T, K, y, eps = case["T"], len(case["logits"]), case["y"], case["eps"]
    out: dict[str, float | str] = {}
    for name in MAPS:
        try:
            probs = get_normalizer(name)(logits / T, **_normalizer_params(name, case))
        except ValueError:
            out[f"map.{name}"] = "error"
            continue
        out.update({f"map.{name}.{i}": v for i, v in enumerate(probs.tolist())})
    soft = case.get("soft")
    base = F.one_hot(torch.tensor(y), K).double() if soft is None else torch.tensor(soft, dtype=torch.float64)
    base = base / base.sum()
    target = (1 - eps) * base + eps / K
    index = torch.tensor([y]) if soft is None else base[None]  # cross_entropy takes either
    model = dict(normalizer=case["dn"], temperature=T, **_normalizer_params(case["dn"], case))
    losses = {
        "cross_entropy": lambda z: logitlab.cross_entropy(z[None], index, temperature=T),
        "label_smoothed_ce": lambda z: logitlab.cross_entropy(z[None], index, label_smoothing=eps, temperature=T),
        "focal": lambda z: logitlab.focal_loss((z / T)[None], index, gamma=case["gamma"]),  # raises on soft
        "brier": lambda z: dv.brier_loss(z[None], target[None], **model),
        "kl": lambda z: dv.kl_divergence(z[None], target[None], **model),
        "reverse_kl": lambda z: dv.reverse_kl_divergence(z[None], target[None], **model),
        "js": lambda z: dv.js_divergence(z[None], target[None], **model),
        "alpha": lambda z: dv.alpha_divergence(z[None], target[None], **model),
        "renyi": lambda z: dv.renyi_divergence(z[None], target[None], **model),
        "tv": lambda z: dv.total_variation(z[None], target[None], **model),
        "hellinger": lambda z: dv.hellinger_distance(z[None], target[None], **model),
        "sparsemax_loss": lambda z: fy.sparsemax_loss(z[None], target[None], temperature=T),
        "entmax15_loss": lambda z: fy.entmax15_loss(z[None], target[None], temperature=T),
        "entmax_loss": lambda z: fy.entmax_loss(z[None], target[None], alpha=case["alpha"], temperature=T),
        "binary_cross_entropy": lambda z: ce.binary_cross_entropy_with_logits(z / T, target, reduction="sum"),
    }
    for name, loss in losses.items():
        z = logits.clone().requires_grad_(True)
        try:
            value = loss(z)
        except (ValueError, TypeError):  # TypeError: focal_loss given a soft target
            out[f"loss.{name}"] = "error"
            continue
        (grad,) = torch.autograd.grad(value, z)
        out[f"loss.{name}"] = value.item()
        out[f"gradnorm.{name}"] = grad.norm().item()
        out.update({f"grad.{name}.{i}": g for i, g in enumerate(grad.tolist())})
    try:
        parts = logitlab.decompose(logits[None] / T, target[None])
    except ValueError:
        out["dec"] = "error"
    else:
        unit = math.log(2) if case["units"] == "bits" else 1.0
        out["dec.cross_entropy"] = parts.cross_entropy.item() / unit
        out["dec.entropy"] = parts.entropy.item() / unit
        out["dec.kl"] = parts.kl.item() / unit
    return out


def fragment(case: dict) -> str:
    case = {**DEFAULTS, **case}
    parts = ["logits=" + ",".join("-inf" if v == -INF else repr(float(v)) for v in case["logits"])]
    parts += [f"{key}={case[key]}" for key in ("T", "alpha", "y", "eps", "gamma", "pos", "order", "dn", "units")]
    if case.get("soft") is not None:
        parts.append("soft=" + ",".join(repr(float(w)) for w in case["soft"]))
    return "#" + "&".join(parts)


# ---- what the page shows ----
_READ = "JSON.stringify(Array.from(document.querySelectorAll('[data-key]')).map(e => [e.dataset.key, e.dataset.value]))"


def shown(browser: Browser) -> dict[str, float | str]:
    pairs = json.loads(browser.evaluate(_READ))
    return {key: (value if value == "error" or key == "input.soft" else float(value)) for key, value in pairs}


def mismatches(page: dict, truth: dict) -> list[str]:
    bad = []
    for key, want in truth.items():
        got = page.get(key, "<missing>")
        if isinstance(want, str) or isinstance(got, str) or math.isinf(want) or math.isinf(got):
            ok = got == want
        else:
            ok = abs(got - want) <= TOL * max(1.0, abs(want))
        if not ok:
            bad.append(f"{key}: page {got!r}, library {want!r}")
    extra = [k for k in page if k.split(".")[0] in ("map", "loss", "grad", "gradnorm", "dec") and k not in truth]
    return bad + [f"{key}: shown by the page, not by the library" for key in extra]


def page_case(browser: Browser) -> dict:
    """The inputs the page holds now, read back from its own fields."""
    state = browser.evaluate("JSON.stringify({logits: Array.from(document.querySelectorAll('.logit-number'))"
                             ".map(e => e.dataset.value),"
                             " T: document.getElementById('temperature-number').dataset.value,"
                             " alpha: document.getElementById('alpha-number').dataset.value,"
                             " eps: document.getElementById('smoothing-number').dataset.value,"
                             " gamma: document.getElementById('gamma-number').dataset.value,"
                             " y: Array.from(document.querySelectorAll('input.target')).findIndex(e => e.checked),"
                             " pos: document.getElementById('positivity').value,"
                             " order: document.getElementById('order').value,"
                             " dn: document.getElementById('divergence-normalizer').value,"
                             " units: document.getElementById('units').value,"
                             " soft: document.getElementById('soft-target').dataset.value})")
    state = json.loads(state)
    state["logits"] = [float(v) for v in state["logits"]]
    for key in ("T", "alpha", "eps", "gamma"):
        state[key] = float(state[key])
    state["order"] = int(state["order"])
    state["soft"] = [float(w) for w in state["soft"].split(",")] if state["soft"] else None
    return state


def check_page(browser: Browser) -> dict:
    """The page's values equal the library's for the inputs the page holds; returns them."""
    case = page_case(browser)
    page = shown(browser)
    bad = mismatches(page, expected(case))
    assert not bad, f"for {case}:\n" + "\n".join(bad[:20])
    return page


@pytest.fixture(scope="module")
def page_url(tmp_path_factory) -> str:
    return write_explorer(tmp_path_factory.mktemp("explorer") / "explorer.html").resolve().as_uri()


@pytest.fixture(scope="module")
def browser():
    with Browser(chromium(), width=1400, height=1000) as b:
        yield b


@pytest.fixture
def fresh(browser, page_url):
    """The page freshly loaded with its defaults."""
    browser.goto(page_url + "#")
    assert browser.evaluate("document.body.dataset.ready") == "1"
    return browser


# ---- without a browser ----
def test_explore_cli_writes_a_self_contained_page(tmp_path, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    out = tmp_path / "sub" / "page.html"
    assert cli.main(["explore", "--out", str(out), "--open"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(out)
    assert opened == [out.resolve().as_uri()]
    html = out.read_text(encoding="utf-8")
    assert html == explorer_html()
    for remote in ("<script src", "<link", "http://", "https://", "@import", "url("):
        assert remote not in html
    assert "__CSS__" not in html and "__ENGINE__" not in html and "__UI__" not in html


# ---- the grid: every value against the library ----
GRID = [
    dict(logits=[2.0, 1.0, 0.5, -1.0]),
    dict(logits=[1.0, 2.0, -INF, 3.0], T=0.5, y=1, eps=0.1, pos="none", alpha=1.3),
    dict(logits=[1.0, 2.0, -INF, 3.0], y=2, eps=0.0),                      # target on an excluded class
    dict(logits=[-INF, -INF, -INF]),                                        # no class left
    dict(logits=[1.0, 1.0, 1.0, 1.0], eps=0.3, dn="sparsemax"),            # ties
    dict(logits=[2.0, 2.0, -INF, -INF, 0.0], dn="entmax", alpha=2.0, pos="relu"),
    dict(logits=[1e4, 0.0, -1e4, 5.0], eps=0.05, y=3),                     # huge logits
    dict(logits=[1e5, 1e5 - 1, 0.0], T=3.0, alpha=2.5, order=6, gamma=0.5, dn="entmax15"),
    dict(logits=[-40.0, -35.0, -50.0], pos="softplus", dn="standard"),     # x/Σx's cold path
    dict(logits=[0.0, 3.0, 1.0, 2.0], pos="none", dn="standard", order=4, gamma=0.0),
    dict(logits=[0.0, 0.0], pos="relu"),                                    # x/Σx: zero sum
    dict(logits=[0.5, -INF], y=1, eps=0.1, T=2.0),
    dict(logits=[3.0, 1.0, 0.2, -INF, -2.0, 7.0, 1.0, 1.0, 1.0, 0.0], T=0.1, eps=0.2, y=4, dn="spherical_softmax",
         alpha=1.05, pos="abs", units="bits"),
    dict(logits=[-1.0, 4.0, 2.5], dn="taylor_softmax", order=8, eps=1.0, y=2),
    dict(logits=[1e300, 0.0, -INF], T=1e-10),                               # z / T overflows: errors
    dict(logits=[2.0, 1.0, 0.5, -1.0], soft=[1.0, 3.0, 0.0, 1.0]),          # a soft target
    dict(logits=[2.0, -INF, 0.5, -1.0], soft=[1.0, 0.0, 2.0, 1.0], eps=0.0, dn="entmax"),
    dict(logits=[2.0, -INF, 0.5], soft=[1.0, 1.0, 2.0], eps=0.2, T=0.7),  # soft mass on an excluded class
]


# The overflow case: divergences.scale_by_temperature formats its message with float() of a
# tensor that requires grad, which torch warns about; the error itself is what is checked.
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")
@pytest.mark.parametrize("case", GRID, ids=[f"case{i}" for i in range(len(GRID))])
def test_every_value_matches_the_library(browser, page_url, case):
    if case is GRID[0]:
        browser.goto(page_url + fragment(case))  # a fresh load reads the fragment
    else:
        browser.evaluate(f"location.hash = {json.dumps(fragment(case))}")  # hashchange
    held = page_case(browser)
    assert held["logits"] == case["logits"] and held["soft"] == case.get("soft")
    page = check_page(browser)
    if case["logits"] == [-INF, -INF, -INF]:
        assert all(page[f"map.{name}.{i}"] == 0.0 for name in MAPS if name != "standard" for i in range(3))
    zeros = [key for key, value in page.items() if key.startswith("map.sparsemax.") and value == 0.0]
    texts = browser.evaluate("Array.from(document.querySelectorAll('[data-key^=\"map.sparsemax.\"]'))"
                             ".filter(e => e.dataset.value === '0').map(e => e.textContent)")
    assert len(texts) == len(zeros) and all(text == "0 (exact)" for text in texts)


def test_hash_errors_are_reported(browser, page_url):
    browser.goto(page_url + "#logits=1,nan&T=0&bogus=1")
    problems = browser.evaluate("document.getElementById('hash-problems').textContent")
    assert "logits" in problems and "T must be > 0" in problems and "unknown key bogus" in problems
    check_page(browser)  # the defaults stand in for what could not be read


# ---- real interactions ----
def test_dragging_a_bar_moves_its_logit(fresh):
    before = page_case(fresh)["logits"]
    box = fresh.evaluate("(function () { var r = document.querySelector('#logit-bars rect.hit[data-i=\"2\"]')"
                         ".getBoundingClientRect(); return [r.left + r.width / 2, r.top, r.height]; })()")
    x, top, height = box
    fresh.drag((x, top + 0.5 * height), (x, top + 0.1 * height))
    after = page_case(fresh)["logits"]
    assert after[:2] == before[:2] and after[3:] == before[3:]
    assert 7.0 < after[2] < 10.0, after  # dragged from 0 towards the top of the [−10, 10] range
    page = check_page(fresh)
    assert page["map.softmax.2"] > 0.9


def test_slider_keys_and_the_exclude_button(fresh):
    fresh.click(".logit-slider[data-i='1']")  # a click on the track sets the logit there
    clicked = page_case(fresh)["logits"][1]
    fresh.press("ArrowRight", 39, times=25)
    logits = page_case(fresh)["logits"]
    assert logits[1] == pytest.approx(min(clicked + 0.25, 10.0), abs=1e-9)
    check_page(fresh)
    fresh.click(".exclude[data-i='0']")
    assert page_case(fresh)["logits"][0] == -INF
    page = check_page(fresh)
    assert all(page[f"map.{name}.0"] == 0.0 for name in MAPS)
    assert page["loss.cross_entropy"] == INF  # the target, class 1, is excluded now
    fresh.click("#temperature")
    T = page_case(fresh)["T"]
    assert T != 1.0
    check_page(fresh)
    fresh.evaluate("var u = document.getElementById('units'); u.value = 'bits'; u.dispatchEvent(new Event('change'))")
    check_page(fresh)  # H(p), KL and H(p, q) now in bits
    assert fresh.evaluate("document.querySelector('[data-key=\"dec.entropy\"]').dataset.unit") == "bits"


def test_typing_a_huge_logit(fresh):
    fresh.click(".logit-number[data-i='3']")
    fresh.evaluate("document.querySelector('.logit-number[data-i=\"3\"]').select()")
    fresh.type_text("1e4")
    fresh.press("Enter", 13)
    assert page_case(fresh)["logits"][3] == 1e4
    page = check_page(fresh)
    assert page["map.softmax.3"] == 1.0 and page["map.sparsemax.0"] == 0.0


def test_typing_a_soft_target(fresh):
    fresh.click("#soft-target")
    fresh.type_text("1, 3, 0, 2")
    fresh.press("Enter", 13)
    assert page_case(fresh)["soft"] == [1.0, 3.0, 0.0, 2.0]
    page = check_page(fresh)
    assert page["loss.focal"] == "error"
    assert fresh.evaluate("document.querySelector('input.target').disabled")
    fresh.evaluate("document.getElementById('soft-target').select()")
    fresh.type_text("1, 2")  # two weights for four classes: refused, marked, nothing changes
    fresh.press("Enter", 13)
    assert fresh.evaluate("document.getElementById('soft-target').classList.contains('bad')")
    assert page_case(fresh)["soft"] == [1.0, 3.0, 0.0, 2.0]


def test_guide_scale(fresh):
    fresh.click("[data-guide='scale']")
    first = check_page(fresh)
    fresh.click("#guide-c")  # the middle of [0.1, 10]
    fresh.press("ArrowRight", 39, times=10)
    c = float(fresh.evaluate("document.querySelector('[data-key=\"guide.c\"]').dataset.value"))
    assert c > 4
    assert page_case(fresh)["logits"] == [c * b for b in (0.5, 1.0, 1.5, 2.0)]
    second = check_page(fresh)
    for i in range(4):  # x/Σx does not move; softmax sharpens
        assert second[f"map.standard.{i}"] == pytest.approx(first[f"map.standard.{i}"], abs=1e-12)
    assert second["map.softmax.3"] > first["map.softmax.3"] + 0.3
    assert second["guide.softmax_max"] == second["map.softmax.3"]
    fresh.click(".exclude[data-i='0']")  # moving a logit by hand ends the view, which owned the logits
    assert fresh.evaluate("document.getElementById('guide-c') === null && !location.hash.includes('guide')")
    assert page_case(fresh)["logits"] == [-INF] + [c * b for b in (1.0, 1.5, 2.0)]
    check_page(fresh)


def test_guide_confidently_wrong(fresh):
    fresh.click("[data-guide='wrong']")
    fresh.click("#guide-margin")
    fresh.press("End", 35)
    assert page_case(fresh)["logits"] == [0.0, 30.0, 0.0, 0.0]
    page = check_page(fresh)
    sweep = {loss: logitlab.gradient_sweep("softmax", loss, margins=[30.0], num_classes=4).grad_norm.item()
             for loss in ("cross_entropy", "brier")}
    assert page["guide.ce_norm"] == pytest.approx(sweep["cross_entropy"], abs=1e-12)
    assert page["guide.ce_norm"] == pytest.approx(math.sqrt(2), abs=1e-9)
    assert page["guide.brier_norm"] == pytest.approx(sweep["brier"], abs=1e-15) and page["guide.brier_norm"] < 1e-10


def test_guide_sigmoid_is_a_two_class_softmax(fresh):
    fresh.click("[data-guide='sigmoid']")
    fresh.click("#guide-z")
    fresh.press("ArrowLeft", 37, times=13)
    case = page_case(fresh)
    z = case["logits"][1]
    assert len(case["logits"]) == 2 and case["logits"][0] == 0.0 and z == pytest.approx(-1.3, abs=1e-9)
    page = check_page(fresh)
    assert page["guide.sigmoid"] == pytest.approx(torch.sigmoid(torch.tensor(z, dtype=torch.float64)).item(), abs=1e-15)
    assert page["guide.softmax"] == pytest.approx(page["guide.sigmoid"], abs=1e-15)


def test_guide_underflow(fresh):
    fresh.click("[data-guide='underflow']")
    report = logitlab.likelihood_underflow(0.5, batch_size=2000)
    page = shown(fresh)
    assert page["guide.n"] == 150 and page["guide.p"] == 0.5
    assert page["guide.product32"] == report.product["float32"][149].item() == 0.0
    assert page["guide.product64"] == report.product["float64"][149].item()
    assert page["guide.log_sum"] == pytest.approx(report.log_likelihood[149].item(), abs=1e-9)
    assert page["guide.zero_at32"] == report.underflow_at["float32"] == 150
    assert math.isnan(page["guide.zero_at64"])  # float64 holds 2^-150
    fresh.click("#guide-n")
    fresh.press("End", 35)
    page = shown(fresh)
    assert page["guide.n"] == 2000 and page["guide.zero_at64"] == report.underflow_at["float64"] == 1075
    assert page["guide.log_sum"] == pytest.approx(report.log_likelihood[1999].item(), abs=1e-9)
