"""parity.md and parity.html from a real run: the matrix, compile failures, timings, failure
details; the HTML page rendered by headless Chromium (skipped where none is installed)."""

import html.parser
import io
import re
import shutil
import subprocess

import pytest

from harness.report import html as report_html
from tests.conftest import run_pytest, write_module

INJECTED = '<img src=x onerror="document.title=1"><script>document.title="pwned"</script>'

CASES = f'''
import harness


def backend():
    import keras
    return keras.backend.backend()


@harness.parity_case(inputs=harness.spec((3, 4)), checks=["build", "outputs", "timing"])
def tanh_twice():
    import keras
    return lambda x: keras.ops.tanh(x) * 2


@harness.parity_case(inputs=harness.spec((3, 4)), checks=["build", "outputs", "timing"])
def off_by_half_on_torch():
    import keras
    shift = 0.5 if backend() == "torch" else 0.0
    return lambda x: keras.ops.relu(x) + shift


@harness.parity_case(inputs=harness.spec((3, 4)), checks=["build", "outputs", "timing"])
def float_of_a_traced_value():
    import keras
    return lambda x: x * float(keras.ops.max(x))


@harness.parity_case(inputs=harness.spec((3, 4)), checks=["build", "outputs"])
def raises_markup():
    raise ValueError({INJECTED!r})
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("pages")
    write_module(path, "test_page_cases.py", CASES)
    return run_pytest(path, "--keras-backends=jax,torch", "--keras-reference=jax-cpu-nojit",
                      "-p", "no:cacheprovider")


@pytest.fixture(scope="module")
def page(run) -> str:
    return (run.path / "reports" / "parity.html").read_text()


def test_markdown_has_the_matrix_compile_failures_and_timings(run):
    md = (run.path / "reports" / "parity.md").read_text()
    assert "| case | jax-cpu-nojit | jax-cpu-jit | torch-cpu-nojit | torch-cpu-jit |" in md
    row = next(line for line in md.splitlines() if line.startswith("| `test_page_cases.py::off_by_half_on_torch`"))
    assert row.count("❌ mismatch<br>") == 2 and row.count("O≠ 5.0e-01") == 2 and row.count("✅ pass") == 2
    compile_section = md.split("## Compile failures")[1].split("##")[0]
    assert "float_of_a_traced_value` | jax-cpu-jit | outputs/predict | jax_tracer_leak" in compile_section
    timings = md.split("## Timings")[1].split("##")[0]
    assert "| `test_page_cases.py::tanh_twice` | torch-cpu-jit | " in timings
    assert "worker peak RSS" in timings and " MB |" in timings
    assert INJECTED not in md and "&lt;script&gt;document.title=" in md


def test_html_is_self_contained_and_escapes_every_user_string(page):
    assert INJECTED not in page
    assert html_escaped(INJECTED) in page
    assert "<script" not in page.lower()
    # Nothing is fetched: no src/href to another document (the SVG namespace is only a name).
    assert not re.search(r'(src|href)="(?!#)', page)
    assert "default-src 'none'" in page


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def test_html_has_a_timing_chart_per_case_with_first_call_markers(page, run):
    charts = re.findall(r'<div class="chart"><h3><code>([^<]+)</code></h3><svg', page)
    assert charts == ["test_page_cases.py::tanh_twice", "test_page_cases.py::off_by_half_on_torch",
                      "test_page_cases.py::float_of_a_traced_value"]
    first = run.cell("tanh_twice", "torch-cpu-jit")["timings"]["predict_first_s"]
    assert f"torch-cpu-jit predict first call {report_html.tables.format_figure(first, 's')}" in page


def test_each_failure_links_from_the_matrix_to_its_full_detail(page, run):
    message = run.cell("raises_markup", "torch-cpu-jit")["failure"]["message"]
    anchors = re.findall(r'<a href="#(failure-\d+)">error', page)
    assert anchors, "the error cells link to their details"
    section = page.split(f'id="{anchors[0]}"')[1].split("</section>")[0]
    # The same failure in every cell is the model's: said once, and each cell links to it.
    property_anchor = re.search(r'<a href="#(property-\d+)">build: ', section).group(1)
    detail = page.split(f'id="{property_anchor}"')[1].split("</section>")[0]
    assert html_escaped(message) in detail
    assert "Traceback" in detail


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
HEADLESS = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-extensions", "--no-first-run", "--hide-scrollbars", "--window-size=1200,900"]


class MatrixReader(html.parser.HTMLParser):
    """The rendered DOM's matrix: its header and rows of cell texts, and every element seen."""

    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.in_matrix, self.rows, self.cell = False, [], None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "table" and ("id", "matrix") in attrs:
            self.in_matrix = True
        elif self.in_matrix and tag == "tr":
            self.rows.append([])
        elif self.in_matrix and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_matrix = False
        elif self.in_matrix and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join(self.cell.split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


@needs_chromium
def test_chromium_renders_the_matrix_and_runs_no_user_markup(run, tmp_path):
    page = run.path / "reports" / "parity.html"
    dom = subprocess.run(HEADLESS + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    reader = MatrixReader()
    reader.feed(dom)
    header, *rows = reader.rows
    assert header == ["case", "jax-cpu-nojit", "jax-cpu-jit", "torch-cpu-nojit", "torch-cpu-jit"]
    by_case = {row[0]: row[1:] for row in rows}
    assert [c.split()[0] for c in by_case["test_page_cases.py::tanh_twice"]] == ["pass"] * 4
    assert [c.split()[0] for c in by_case["test_page_cases.py::off_by_half_on_torch"]] == [
        "pass", "pass", "mismatch", "mismatch"]
    assert by_case["test_page_cases.py::float_of_a_traced_value"][1].split()[0] == "compile_error"
    assert "O✗" in by_case["test_page_cases.py::float_of_a_traced_value"][1]  # its failing check
    assert "img" not in reader.tags and "script" not in reader.tags  # shown as text, never parsed
    assert "<title>keras-parity report</title>" in dom  # no injected script renamed the page
    assert "svg" in reader.tags and "rect" in reader.tags


@needs_chromium
def test_chromium_screenshot_shows_the_coloured_matrix(run, tmp_path):
    from PIL import Image

    shot = tmp_path / "page.png"
    subprocess.run(HEADLESS + [f"--screenshot={shot}", (run.path / "reports" / "parity.html").as_uri()],
                   capture_output=True, timeout=120, check=True, cwd=tmp_path)
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1200, 900)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    for status in ("pass", "mismatch", "compile_error", "error"):
        rgb = tuple(int(report_html.STATUS_COLOURS[status][i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, f"no {status} cell painted in the screenshot"
