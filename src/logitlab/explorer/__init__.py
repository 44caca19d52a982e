"""The explorer: one offline HTML page where a learner moves K logits and watches every map and loss.

``logitlab explore`` writes the page. It holds K logits (2 to 10), a temperature T, entmax's α,
a target (a class, or a soft target given as K weights) with label smoothing ε, and shows live,
for s = z / T:

* every normalizer of the registry side by side (softmax, x/Σx with its positivity transform,
  sparsemax, 1.5-entmax, α-entmax, spherical softmax, Taylor softmax, per-class sigmoid), with
  exact zeros marked;
* every loss D(target ‖ model) (cross-entropy, label-smoothed cross-entropy, focal, Brier, the
  divergences over a chosen normalizer, the sparsemax and entmax Fenchel–Young losses, binary
  cross-entropy) with its gradient ∂L/∂z per logit;
* H(p, q) = H(p) + KL(p ‖ q) as a stacked bar, in nats or bits;
* four guided views: scaling the logits by c, a confidently wrong model, K = 2 (sigmoid is the
  softmax of (0, z)), and the product of n likelihoods against the sum of their logs.

The maps and losses are computed in the page by ``engine.js``, float64 JavaScript that follows the
library's semantics (``-inf`` logits are excluded classes; a row of all ``-inf`` maps to zeros and
every loss is undefined on it) and the library's defaults (spherical ε = 1e-6, Taylor order 2,
α = 1.5, focal γ = 2, JS β = ½, Amari and Rényi orders ½). The tests load the page in headless
Chromium and compare every displayed number with the Python functions.

The page reads its inputs from the URL fragment, e.g.
``explorer.html#logits=1,2,-inf,3&T=0.5&alpha=1.3&y=2&eps=0.1`` (keys: ``logits``, ``T``,
``alpha``, ``y`` (0-based target class), ``soft`` (K target weights), ``eps``, ``gamma``, ``pos``
(none|softplus|relu|abs), ``order``, ``dn`` (the divergences' normalizer), ``units``
(nats|bits), ``guide`` (scale|wrong|sigmoid|underflow) and the guides' ``c``, ``m``, ``z``,
``n``, ``p``), reports what it cannot read, and writes the inputs back as they change, so a
view can be bookmarked.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["explorer_html", "write_explorer", "DEFAULT_OUT"]

DEFAULT_OUT = Path("explorer.html")
_PARTS = {"__CSS__": "page.css", "__ENGINE__": "engine.js", "__UI__": "ui.js"}


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def explorer_html() -> str:
    """The explorer page as one self-contained HTML string (inline CSS and JavaScript, no network).

    The template ``page.html`` gets ``page.css``, ``engine.js`` and ``ui.js`` inlined; nothing
    in the result refers to another file or URL, so it opens offline from any directory.

    Returns:
        The HTML text (UTF-8 when written).

    Example:
        >>> html = explorer_html()
        >>> html.startswith("<!DOCTYPE html>") and "function sparsemax" in html
        True
        >>> any(tag in html for tag in ("<script src", "<link ", "http://", "https://"))
        False
    """
    from logitlab import __version__

    html = _read("page.html").replace("__VERSION__", __version__)
    for marker, name in _PARTS.items():
        html = html.replace(marker, _read(name))
    return html


def write_explorer(path: str | Path = DEFAULT_OUT) -> Path:
    """Write the explorer page to ``path`` (parent directories are created); return the path.

    Args:
        path: the HTML file to write (default ``explorer.html`` in the working directory).

    Returns:
        The path written, as given (a :class:`~pathlib.Path`).

    Raises:
        OSError: the file cannot be written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     out = write_explorer(Path(tmp) / "page" / "explorer.html")
        ...     out.name, out.stat().st_size > 10_000
        ('explorer.html', True)
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(explorer_html(), encoding="utf-8")
    return out
