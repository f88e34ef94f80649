"""The documentation site builds with ``mkdocs build --strict`` (a broken link, reference or
docstring fails it) and renders in headless Chromium with its key content."""
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polyact.approx.fitting import fit

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
bs4 = pytest.importorskip("bs4", reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# appended to a page under test: records every image's decoded size once the page has loaded
IMAGE_PROBE = ("<script>addEventListener('load', () => document.body.setAttribute('data-image-sizes', "
               "[...document.images].map(i => i.naturalWidth + 'x' + i.naturalHeight).join(' ')));</script>")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-5000:]}"
    return out


def render(site: Path, page: str, tmp_path: Path) -> "bs4.BeautifulSoup":
    """The DOM of ``page`` after headless Chromium has loaded it, scripts and images included."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does): browser check skipped")
    path = site / page
    path.write_text(path.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"), encoding="utf-8")
    flags = ["--headless", "--disable-gpu", "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    done = subprocess.run([CHROMIUM, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-3000:]
    return bs4.BeautifulSoup(done.stdout, "html.parser")


def decoded_images(dom) -> list[tuple[int, int]]:
    sizes = dom.body.get("data-image-sizes")
    assert sizes is not None, "the page's load event never fired"
    return [tuple(int(v) for v in s.split("x")) for s in sizes.split()]


def test_every_page_of_the_nav_is_built(site):
    for page in ("index.html", "getting-started/index.html", "concepts/refresh/index.html", "how-to/serve/index.html",
                 "api/he_backend/index.html", "readme/index.html", "demo_report/index.html",
                 *(f"notebooks/{nb.stem}/index.html" for nb in sorted((ROOT / "notebooks").glob("*.ipynb")))):
        assert (site / page).is_file(), page


def test_benchmark_page_holds_the_readme_tables(site):
    page = bs4.BeautifulSoup((site / "benchmarks/index.html").read_text(encoding="utf-8"), "html.parser")
    headers = [" | ".join(th.get_text(strip=True) for th in table.find_all("th")) for table in page.find_all("table")]
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Benchmarks\n")[1].split("\n## ")[0]
    expected = [line.strip("|").replace("`", "").strip() for line in readme.splitlines()
                if line.startswith("|") and not line.startswith("|---")]
    assert headers and all(h.replace(" | ", "|") in {e.replace(" | ", "|") for e in expected} for h in headers)
    assert "readme-section" not in page.decode()


def test_home_page_renders_with_its_plot(site, tmp_path):
    dom = render(site, "index.html", tmp_path)
    assert dom.find("h1").get_text(strip=True).startswith("polyact")
    plot = dom.find("img", src="accuracy_vs_depth.png")
    assert plot is not None
    assert min(w for w, _ in decoded_images(dom)) > 100, "an image of the home page did not load"
    assert dom.select("nav a[href='concepts/pann/']"), "the navigation lost the concepts"


def test_api_page_renders_signatures_from_the_docstrings(site, tmp_path):
    dom = render(site, "api/approx/index.html", tmp_path)
    heading = dom.find(id="polyact.approx.fitting.fit")
    assert heading is not None
    signatures = ["".join(s.get_text().split()).replace('"', "'") for s in dom.select(".doc-signature")]
    shown = next((s for s in signatures if s.startswith("fit(")), None)
    assert shown is not None, f"no signature of fit among {signatures}"
    for parameter in inspect.signature(fit).parameters.values():  # every parameter, with its default
        default = "" if parameter.default is inspect.Parameter.empty else f"={parameter.default!r}"
        assert f"{parameter.name}:" in shown and default in shown, (parameter, shown)
    docstring_start = fit.__doc__.splitlines()[0].replace("``", "")
    assert docstring_start in " ".join(dom.get_text().split())


def test_notebook_page_renders_its_stored_plots_and_outputs(site, tmp_path):
    dom = render(site, "notebooks/01_approximating_activations/index.html", tmp_path)
    plots = [img for img in dom.find_all("img") if img.get("src", "").startswith("data:image/png")]
    assert len(plots) >= 3
    assert sum(w > 200 for w, _ in decoded_images(dom)) >= 3, "the notebook's plots did not decode"
    assert "depth per degree" in dom.get_text()
