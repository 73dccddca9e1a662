"""The workbench in a real browser: Debian's chromium driven by playwright (headless, offline).

Every page loads without console errors; the convolution page's sizes are PyTorch's; the analyse
page's numbers are ``cnnkit summary``'s; an uploaded digit gets the run's prediction and a Grad-CAM
image; curves follow metrics.csv while a run trains; the security cases are refused on the page.
Skipped, with the reason, where chromium or playwright is missing (``.ci/run`` installs both).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_serve import (
    CONV_CASES,
    SPEC,
    _torch_conv,
    bomb_png,
    digit_png,
    make_run,
    start,
    stop,
    write_metrics,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = ["/conv", "/analyse", "/runs", "/predict"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install playwright (the 'test' extra has it)"
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip("no chromium at /usr/bin/chromium: apt-get install -y chromium (.ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "mnist_a")
    make_run(root / "mnist_b", epochs=2)
    server, client = start(root)
    yield root, client
    stop(server)


@pytest.fixture
def page(browser, site):
    """A fresh page at 1280x800 that records console errors and uncaught exceptions."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.base = site[1].base
    yield pg
    ctx.close()


def _goto(pg, path, ready):
    pg.goto(pg.base + path)
    pg.wait_for_selector(f"body[data-{ready}]")


def test_every_page_loads_without_console_errors(page):
    for path, ready in zip(PAGES, ["done", "ready", "ready", "ready"]):
        _goto(page, path, ready)
        assert page.locator("header nav a.here").count() == 1
    assert page.errors == []


def _fill_conv(pg, size, kernel, stride, padding, dilation):
    pg.select_option("#dims", str(len(size)))
    pg.select_option("#padding", padding if isinstance(padding, str) else "n")
    values = {"#in-h": size[0], "#kernel": kernel, "#stride": stride, "#dilation": dilation}
    if len(size) == 2:
        values["#in-w"] = size[1]
    if not isinstance(padding, str):
        values["#pad-n"] = padding
    for sel, v in values.items():
        pg.fill(sel, str(v))
    # settled: what is drawn is the answer to what the form now asks
    pg.wait_for_function("() => document.body.dataset.drawn === JSON.stringify(request())")


def test_conv_page_sizes_are_pytorchs(page):
    _goto(page, "/conv", "done")
    cases = [c for c in CONV_CASES if all(isinstance(v, int) for v in (c[1], c[2]))]
    for size, kernel, stride, padding, dilation in cases:
        _fill_conv(page, size, kernel, stride, padding, dilation)
        conv = _torch_conv(size, kernel, stride, padding, dilation)
        want = list(conv(torch.zeros(1, 1, *size)).shape[2:])
        page.wait_for_function(
            "(w) => document.getElementById('out-size').textContent === w", arg=" x ".join(map(str, want)), timeout=5000
        )
    assert page.errors == []


def test_conv_page_lights_the_cells_an_output_reads_and_pads_like_tensorflow_or_caffe(page):
    _goto(page, "/conv", "done")
    for mode, pad_row in (("same", 8), ("caffe", 0)):  # 8x8, k3 s2: one padding row, at the end or the start
        _fill_conv(page, [8, 8], 3, 2, mode, 1)
        page.wait_for_function("() => document.querySelectorAll('.input-grid rect').length === 81")
        pads = page.eval_on_selector_all(".input-grid rect.pad", "es => es.map(e => [+e.dataset.r, +e.dataset.c])")
        rows_all_pad = {r for r in range(9) if sum(1 for rr, _ in pads if rr == r) == 9}
        assert rows_all_pad == {pad_row}
        page.hover(".output-grid rect[data-r='0'][data-c='0']")
        lit = page.eval_on_selector_all(".input-grid rect.read", "es => es.map(e => [+e.dataset.r, +e.dataset.c])")
        assert len(lit) == 9
        start = 1 if mode == "caffe" else 0  # the caffe grid starts with a padding row and column
        assert sorted(lit) == [[r, c] for r in range(3) for c in range(3)] and all(
            (r < start or c < start) == ([r, c] in pads) for r, c in lit
        )


def _analyse(pg, target=None, spec=None, batch=8):
    _goto(pg, "/analyse", "ready")
    if spec is not None:
        pg.select_option("#source", "spec")
        pg.fill("#spec", spec)
    else:
        pg.select_option("#zoo", target)
    pg.fill("#batch", str(batch))
    pg.click("#go")
    pg.wait_for_selector("body[data-rendered]", timeout=60000)


def _num(text: str) -> int | None:
    text = text.strip()
    return None if text == "-" else int(text.replace(",", ""))


def _check_numbers(pg, s):
    assert pg.get_attribute("body", "data-rendered") == "analyse", pg.inner_text("#an-error")
    for key in ("params", "trainable_params", "macs", "other_ops", "param_bytes"):
        assert _num(pg.inner_text(f".stat[data-key='{key}'] .v")) == s["totals"][key]
    for key in ("inference_peak_bytes", "training_peak_bytes", "saved_activation_bytes"):
        assert _num(pg.inner_text(f".stat[data-key='{key}'] .v")) == s["memory"][key]
    for kind in ("inference", "training"):
        assert _num(pg.inner_text(f"#versus-table tr[data-kind='{kind}'] .real")) == s["memory"][f"{kind}_peak_bytes"]
        assert _num(pg.inner_text(f"#versus-table tr[data-kind='{kind}'] .book")) == s["textbook"][f"{kind}_bytes"]
    rows = pg.eval_on_selector_all(
        "#layers tr[data-name]",
        "es => es.map(e => [e.dataset.name, "
        "e.querySelector('.params').textContent, e.querySelector('.macs').textContent, "
        "e.querySelector('.saved').textContent])",
    )
    assert [(n, _num(p), _num(m), _num(v)) for n, p, m, v in rows] == [
        (r["name"], r["params"], r["macs"], r.get("saved_bytes")) for r in s["layers"]
    ]
    assert f"Peak {s['memory']['training_peak_bytes']:,} B" in pg.inner_text("#peak-text")


def test_analyse_page_numbers_are_cnnkit_summarys(page, capsys, tmp_path):
    from cnnkit.cli import main

    assert main(["summary", "keras_mnist_convnet", "--batch", "8", "--format", "json"]) == 0
    _analyse(page, "keras_mnist_convnet")
    _check_numbers(page, json.loads(capsys.readouterr().out))
    # the timeline: every op drawn (87 < 800), the peak line where the peak is
    assert page.locator("#timeline-svg polygon").count() >= 4
    page.hover("#timeline-svg", position={"x": 400, "y": 100})
    assert "live" in page.inner_text("#timeline .tip")
    # a spec typed into the page: the numbers of the same spec file
    (tmp_path / "net.yaml").write_text(SPEC)
    assert main(["summary", str(tmp_path / "net.yaml"), "--batch", "3", "--format", "json"]) == 0
    _analyse(page, spec=SPEC, batch=3)
    _check_numbers(page, json.loads(capsys.readouterr().out))
    # the fit panel
    page.fill("#budget", "8MB")
    page.fill("#fit-batch", "64")
    page.click("#fit-go")
    page.wait_for_selector("#fit-out tr[data-kind='training'] .max-batch")
    assert page.errors == []


def test_analyse_page_shows_refusals(page):
    _analyse(page, spec="input: 3x512x512\nlayers:\n  - conv2d: {filters: 4096, kernel_size: 3}\n")
    assert "too big to analyse here" in page.inner_text("#an-error")
    _analyse(page, spec="input: 1x8x8\nlayers: &a [flatten]\nx: *a\n")
    assert "aliases" in page.inner_text("#an-error")


def test_number_fields_show_the_servers_refusal_of_what_they_hold(page):
    _goto(page, "/conv", "done")
    page.fill("#kernel", "")  # an empty field is sent as "", not as the 0 that +"" makes of it
    page.wait_for_function("() => document.getElementById('conv-error').textContent.includes('kernel')")
    assert page.inner_text("#conv-error") == "kernel must be an integer from 1 to 100,000; received: ''"
    page.fill("#kernel", "3")
    page.select_option("#padding", "n")
    page.fill("#pad-n", "1e400")  # more than a double holds: the browser's value is "", as for no number
    page.wait_for_function("() => document.getElementById('conv-error').textContent.includes('padding')")
    assert page.inner_text("#conv-error").endswith("received: ''")
    _analyse(page, "keras_mnist_convnet", batch="")
    assert page.inner_text("#an-error") == "batch must be an integer from 1 to 4,096; received: ''"
    assert [e for e in page.errors if "status of 4" not in e] == []  # the refusals themselves are 4xx loads


def test_runs_page_overlays_runs_and_follows_a_training_run(page, site):
    root, _ = site
    _goto(page, "/runs", "ready")
    page.wait_for_selector("#curves polyline.series")
    first = page.get_attribute("#curves polyline.series", "data-name")
    page.check(f"#runlist input[value='{'mnist_b' if first == 'mnist_a' else 'mnist_a'}']")
    page.wait_for_function("() => document.querySelectorAll('#curves polyline.series').length === 2")
    write_metrics(root / first, 4 if first == "mnist_a" else 3)  # the run trains on: one more epoch
    want = 4 if first == "mnist_a" else 3
    page.wait_for_function(
        "([name, n]) => [...document.querySelectorAll('#curves polyline.series')].some("
        "e => e.dataset.name === name && +e.dataset.points === n)",
        arg=[first, want],
        timeout=10000,
    )
    write_metrics(root / first, 3 if first == "mnist_a" else 2)
    assert page.errors == []


def test_predict_page_offers_zoo_models_that_take_images_only(page):
    _goto(page, "/predict", "ready")
    offered = page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert "lenet5" in offered and "resnet18" in offered
    assert not {"fcn1d", "resnet1d", "gan_generator"} & set(offered)


def test_predict_page_gets_the_runs_prediction_and_a_gradcam(page, site, tmp_path):
    import cnnkit
    from cnnkit.tasks.classify.predict import predict_files

    root, _ = site
    png = digit_png(tmp_path / "digit.png")
    want = predict_files(cnnkit.load(root / "mnist_a"), [str(png)])[0]["top"][0][0]
    _goto(page, "/predict", "ready")
    page.select_option("#model", "mnist_a")
    page.set_input_files("#file", str(png))
    page.click("#pr-go")
    page.wait_for_selector("body[data-predicted]", timeout=30000)
    assert page.get_attribute("body", "data-predicted") == want
    assert page.locator("#top-bars rect").count() == 5
    page.wait_for_function("() => document.getElementById('cam-img').naturalWidth > 300")
    assert page.get_attribute("#cam-img", "src").startswith("data:image/png;base64,")
    page.select_option("#method", "saliency")
    page.click("#ex-go")
    page.wait_for_function(
        "() => document.getElementById('ex-img') && document.getElementById('ex-img').naturalWidth > 300"
    )
    assert page.errors == []


def test_security_cases_are_refused_from_the_page(page, tmp_path):
    _goto(page, "/predict", "ready")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(5000, 4000))
    page.select_option("#model", "mnist_a")
    page.set_input_files("#file", str(bomb))
    page.click("#pr-go")
    page.wait_for_selector("body[data-predicted='error']")
    assert "decompression bombs are refused" in page.inner_text("#pr-error")
    statuses = page.evaluate("""async () => {
        const get = async (u, o) => (await fetch(u, o)).status;
        const post = (u, b) => get(u, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(b)});
        const f = new FormData(); f.append('model', '../mnist_a'); f.append('method', 'filters');
        return [await get('/api/runs/metrics?run=../mnist_a'), await get('/api/runs/figure?run=mnist_a&file=model.safetensors'),
                await get('/static/../server.py'), await post('/api/analyse', {target: '/etc/passwd.yaml'}),
                await post('/api/analyse', {target: 'x.py:factory'}),
                await get('/api/explain', {method: 'POST', body: f})];
    }""")
    assert statuses == [404, 404, 404, 400, 400, 404]
    # the page shows the server's message, never a traceback
    page.set_input_files("#file", {"name": "t.png", "mimeType": "image/png", "buffer": b"not an image"})
    page.click("#pr-go")
    page.wait_for_function("() => document.getElementById('pr-error').textContent.includes('not an image')")
    assert "Traceback" not in page.content()
    assert [e for e in page.errors if "status of 4" not in e] == []  # the refusals themselves are 4xx loads


def test_pages_fit_a_phone(browser, site):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = ctx.new_page()
    try:
        for path in PAGES + ["/analyse?model=keras_mnist_convnet&batch=2&run=1"]:
            pg.goto(site[1].base + path)
            pg.wait_for_selector("body[data-rendered]" if "run=1" in path else "body[data-ready], body[data-done]")
            width = pg.evaluate("document.documentElement.scrollWidth")
            assert width <= 390 + 1, (path, width)
    finally:
        ctx.close()
