"""The interactive page (`chainrule viz --html`, `train --report`, `report`) in a real browser.

Each page is written by the CLI and opened from disk in headless Chromium (tests/support/
browser.py), which fails a test on any console error or warning, uncaught exception or network
request. The checks read the page's own data (the JSON it carries) and compare what is drawn
and what a click, a key or the stepper shows against it.
"""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from support.browser import browser, page  # noqa: F401 - fixtures, which pytest finds by name
from support.browser import expect, open_file, watched_tab
from support.cli import chainrule, ok
from support.paths import ROOT

pytestmark = pytest.mark.browser

# Relative to the repository's root, where the CLI runs: the page then names the file as a
# reader would type it (the screenshots show it).
EXAMPLES = Path("examples")
MLP = EXAMPLES / "mlp.nn"
MLP_DIGITS = EXAMPLES / "mlp_digits.nn"
LENET = EXAMPLES / "lenet_digits.nn"
RESNET = EXAMPLES / "resnet_digits.nn"
GRU = EXAMPLES / "gru_digits.nn"
ONNX_MLP = Path("tests") / "fixtures" / "onnx" / "mlp.onnx"
DIGITS_TRAIN = EXAMPLES / "data" / "digits_train.npz"
DIGITS_TEST = EXAMPLES / "data" / "digits_test.npz"
SCREENSHOTS = ROOT / "docs" / "images"
EPOCHS = 3

SELECTED = re.compile(r"\bselected\b")
STEPPING = re.compile(r"\bstepping\b")
HIGHLIGHT = re.compile(r"\bhighlight\b")

# log(-1) is NaN: the page must mark y, and what is computed from it, as not finite.
NAN_MODEL = """\
# The log of a negative number is NaN.
model logs(x: f32[B, 3]) {
    y = log(x)
    J = sum(y)
    return J
}
"""


def graph_page(directory, model, *options):
    """The page `chainrule viz MODEL --html` writes, with `options`."""
    path = directory / f"{model.stem}.html"
    ok(chainrule("viz", model, "--html", path, *options))
    return path


@pytest.fixture(scope="module")
def mlp_page(tmp_path_factory):
    return graph_page(tmp_path_factory.mktemp("mlp"), MLP, "--grad")


@pytest.fixture(scope="module")
def mlp_values_page(tmp_path_factory):
    return graph_page(tmp_path_factory.mktemp("mlp-values"), MLP, "--grad", "--random-inputs")


def page_data(tab) -> dict:
    return tab.evaluate("JSON.parse(document.getElementById('chainrule-data').textContent)")


def shown_view(tab) -> dict:
    """The view drawn: the one `select#view-select` names, or the only one."""
    views = page_data(tab)["graph"]["views"]
    chooser = tab.locator("select#view-select")
    if chooser.count() == 0:
        assert len(views) == 1, "several views and no select#view-select"
        return views[0]
    key = chooser.input_value()
    return next(view for view in views if view["key"] == key)


def named(view, name) -> dict:
    matches = [node for node in view["nodes"] if node["name"] == name]
    assert len(matches) == 1, f"{len(matches)} nodes named {name!r}"
    return matches[0]


def drawn(tab, node_id):
    return tab.locator(f'#graph-canvas g.node[data-id="{node_id}"]')


def drawn_nodes(tab):
    return tab.locator("#graph-canvas g.node")


def details(tab, field):
    return tab.locator(f"#node-details [data-field={field}]")


def goto_links(locator) -> list[str]:
    return locator.evaluate_all("links => links.map(link => link.dataset.goto)")


def expect_source_line(tab, number, text):
    """Line `number` of the source pane, holding `text`, is the one highlighted, and shown."""
    highlighted = tab.locator("#source-pane .source-line.highlight")
    expect(highlighted).to_have_count(1)
    line = tab.locator(f'#source-pane .source-line[data-line="{number}"]')
    expect(line).to_have_class(HIGHLIGHT)
    expect(line).to_have_attribute("aria-current", "true")
    expect(line).to_contain_text(text)
    expect(line).to_be_in_viewport()


def colours(tab) -> list[str]:
    return tab.evaluate("[document.documentElement, document.body].map("
                        "element => getComputedStyle(element).backgroundColor)")


MISBEHAVING_PAGE = """<!DOCTYPE html><title>offline?</title>
<img src="https://example.com/picture.png" alt="">
<script>
console.warn("a warning");
new WebSocket("ws://example.com/socket");
throw new Error("an uncaught exception");
</script>
"""


def test_the_browser_reports_what_a_page_must_not_do(browser, tmp_path):
    """The harness itself: each thing `page` fails a test for is seen, and refused."""
    path = tmp_path / "misbehaving.html"
    path.write_text(MISBEHAVING_PAGE)
    with watched_tab(browser) as (tab, problems):
        open_file(tab, path)
    report = problems.report()
    for seen in ("warning: a warning", "an uncaught exception",
                 "refused: https://example.com/picture.png", "refused: ws://example.com/socket"):
        assert seen in report, report


def test_the_graph_draws_every_node_and_edge(page, mlp_page):
    open_file(page, mlp_page)
    view = shown_view(page)
    expect(drawn_nodes(page)).to_have_count(len(view["nodes"]))
    ids = drawn_nodes(page).evaluate_all("nodes => nodes.map(node => node.dataset.id)")
    assert sorted(ids) == sorted(node["id"] for node in view["nodes"])
    edges = page.locator("#graph-canvas .edge").evaluate_all(
        "edges => edges.map(edge => [edge.dataset.from, edge.dataset.to])")
    assert {tuple(edge) for edge in edges} == {(start, end) for start, end, _ in view["edges"]}
    assert view["stats"]["backward"] > 0


def test_each_node_is_a_button_a_screen_reader_can_read(page, mlp_page):
    open_file(page, mlp_page)
    view = shown_view(page)
    attributes = drawn_nodes(page).evaluate_all("""nodes => nodes.map(node => [
        node.dataset.id, node.getAttribute('role'), node.dataset.side, node.dataset.kind,
        node.getAttribute('tabindex'), node.getAttribute('aria-label')])""")
    by_id = {node_id: rest for node_id, *rest in attributes}
    for node in view["nodes"]:
        role, side, kind, tabindex, label = by_id[node["id"]]
        assert (role, side, kind) == ("button", node["side"], node["kind"]), node["name"]
        assert re.fullmatch(r"-?\d+", tabindex or ""), (node["name"], tabindex)
        assert node["name"] in (label or ""), (node["name"], label)
    z = drawn(page, named(view, "z")["id"])
    expect(z).to_have_attribute("aria-label", re.compile(r"\bz\b.*matmul.*line 7"))


def test_a_backward_node_shows_its_forward_origin_and_source_line(page, mlp_page):
    open_file(page, mlp_page)
    view = shown_view(page)
    gradient, o = named(view, "dJ/dh"), named(view, "o")
    assert (gradient["side"], gradient["origin"], o["loc"]["line"]) == ("backward", o["id"], 9)
    drawn(page, gradient["id"]).click()
    expect(drawn(page, gradient["id"])).to_have_class(SELECTED)
    expect(details(page, "ir")).to_contain_text(gradient["ir"])
    expect(details(page, "type")).to_contain_text(gradient["type"])
    expect(details(page, "rule")).to_contain_text(gradient["rule"]["name"])
    expect(details(page, "source")).to_contain_text("o = h @ W2.T")
    expect_source_line(page, 9, "o = h @ W2.T")
    origin = details(page, "origin").locator("a[data-goto]")
    assert goto_links(origin) == [o["id"]]

    origin.click()
    expect(drawn(page, o["id"])).to_have_class(SELECTED)
    expect(drawn(page, gradient["id"])).not_to_have_class(SELECTED)
    expect_source_line(page, 9, "o = h @ W2.T")
    terms = goto_links(details(page, "terms").locator("a[data-goto]"))
    assert gradient["id"] in terms
    assert sorted(terms) == sorted(o["terms"])


def test_a_term_link_selects_the_backward_node(page, mlp_page):
    open_file(page, mlp_page)
    view = shown_view(page)
    h, gradient = named(view, "h"), named(view, "dJ/dz")
    assert gradient["origin"] == h["id"]
    drawn(page, h["id"]).click()
    expect_source_line(page, 8, "h = relu(z)")
    details(page, "terms").locator(f'a[data-goto="{gradient["id"]}"]').click()
    expect(drawn(page, gradient["id"])).to_have_class(SELECTED)
    expect(details(page, "formula")).to_contain_text("∂J/∂z")
    expect_source_line(page, gradient["loc"]["line"], "h = relu(z)")


def test_the_stepper_walks_the_chain_rule_from_J_to_W1(page, mlp_page):
    open_file(page, mlp_page)
    view = shown_view(page)
    w1 = next(param for param in view["params"] if param["name"] == "W1")
    steps = w1["steps"]
    values = [next(node["name"] for node in view["nodes"] if node["id"] == step["value"])
              for step in steps]
    assert values[0] == "J" and values[-1] == "W1"
    lecture = ("J", "L", "o", "h", "z", "W1")
    assert [name for name in values if name in lecture] == list(lecture), values
    assert steps[-1]["node"] == w1["gradient"]
    announced = page.locator("#stepper [aria-live=polite], #stepper[aria-live=polite]")
    expect(announced).not_to_have_count(0)

    page.select_option("#stepper-param", "W1")
    listed = page.locator("#step-list li")
    for count, step in enumerate(steps, start=1):
        page.click("#step-next")
        expect(listed).to_have_count(count)
        expect(listed.last).to_contain_text(step["formula"])
        expect(page.locator("#step-formula")).to_contain_text(step["formula"])
        expect(drawn(page, step["node"])).to_have_class(STEPPING)
        expect(drawn(page, step["value"])).to_have_class(STEPPING)
    if page.locator("#step-next").is_enabled():
        page.click("#step-next")
    expect(listed).to_have_count(len(steps))

    formulas = listed.all_inner_texts()
    for factor in ("∂J/∂o", "∂J/∂h", "∂J/∂z"):
        assert any(factor in formula for formula in formulas), (factor, formulas)
    firsts = [next(i for i, formula in enumerate(formulas) if factor in formula)
              for factor in ("∂J/∂o", "∂J/∂h", "∂J/∂z", "∂J/∂W1")]
    assert firsts == sorted(firsts), formulas
    assert "∂J/∂W1" in formulas[-1]
    expect(drawn(page, w1["gradient"])).to_have_class(STEPPING)

    page.click("#step-prev")
    expect(listed).to_have_count(len(steps) - 1)
    page.click("#step-reset")
    expect(listed).to_have_count(0)
    expect(page.locator("#graph-canvas g.node.stepping")).to_have_count(0)


def test_values_appear_with_random_inputs(page, mlp_values_page):
    open_file(page, mlp_values_page)
    view = shown_view(page)
    z = named(view, "z")
    value = z["value"]
    assert value["shape"][1:] == [256] and value["nan"] == value["inf"] == 0
    drawn(page, z["id"]).click()
    shown = details(page, "value")
    for word in ("min", "max", "mean", "std", "256"):
        expect(shown).to_contain_text(word)
    expect(shown.locator("svg.histogram, svg.heatmap").first).to_be_visible()
    expect(page.locator("#graph-canvas g.node.nonfinite")).to_have_count(0)


def test_a_nan_marks_its_node(page, tmp_path):
    model = tmp_path / "logs.nn"
    model.write_text(NAN_MODEL)
    np.savez(tmp_path / "inputs.npz", x=np.array([[-1.0, 1.0, 2.0]], dtype=np.float32))
    open_file(page, graph_page(tmp_path, model, "--inputs", tmp_path / "inputs.npz"))
    view = shown_view(page)
    y, x = named(view, "y"), named(view, "x")
    assert y["value"]["nan"] == 1 and x["value"]["nan"] == 0
    expect(drawn(page, y["id"])).to_have_class(re.compile(r"\bnonfinite\b"))
    expect(drawn(page, x["id"])).not_to_have_class(re.compile(r"\bnonfinite\b"))
    drawn(page, y["id"]).click()
    expect(details(page, "value")).to_contain_text("nan", ignore_case=True)


def test_the_optimised_view_and_the_graph_as_written(page, tmp_path):
    open_file(page, graph_page(tmp_path, MLP, "--grad", "-O2"))
    views = {view["key"]: view for view in page_data(page)["graph"]["views"]}
    assert sorted(views) == ["O0", "O2"] and views["O2"]["changes"]
    sizes = {key: len(view["nodes"]) for key, view in views.items()}
    assert sizes["O0"] != sizes["O2"]
    options = page.locator("select#view-select option").evaluate_all(
        "options => options.map(option => option.value)")
    assert sorted(options) == ["O0", "O2"]
    expect(drawn_nodes(page)).to_have_count(sizes[shown_view(page)["key"]])
    for key in ("O0", "O2", "O0"):
        page.select_option("select#view-select", key)
        expect(drawn_nodes(page)).to_have_count(sizes[key])


def test_the_forward_and_backward_checkboxes_hide_a_side(page, mlp_page):
    open_file(page, mlp_page)
    view = shown_view(page)
    forward = sum(node["side"] == "forward" for node in view["nodes"])
    shown = page.locator("#graph-canvas g.node:visible")
    page.uncheck("#show-backward")
    expect(shown).to_have_count(forward)
    page.check("#show-backward")
    page.uncheck("#show-forward")
    expect(shown).to_have_count(len(view["nodes"]) - forward)


def test_the_keyboard_moves_between_nodes(page, mlp_page):
    open_file(page, mlp_page)
    view = shown_view(page)
    neighbours = {}
    for start, end, _ in view["edges"]:
        neighbours.setdefault(start, set()).add(end)
        neighbours.setdefault(end, set()).add(start)
    selected = page.locator("#graph-canvas g.node.selected")

    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.matches('#graph-canvas g.node')"):
            break
    else:
        pytest.fail("Tab never reached a node")

    z = named(view, "z")
    drawn(page, z["id"]).focus()
    page.keyboard.press("Enter")
    expect(selected).to_have_count(1)
    expect(drawn(page, z["id"])).to_have_class(SELECTED)
    page.keyboard.press("ArrowRight")
    expect(drawn(page, z["id"])).not_to_have_class(SELECTED)
    expect(selected).to_have_count(1)
    assert selected.get_attribute("data-id") in neighbours[z["id"]]
    page.keyboard.press("ArrowDown")
    expect(selected).to_have_count(1)
    page.keyboard.press("Escape")
    expect(selected).to_have_count(0)
    expect(page.locator("#node-details [data-field]")).to_have_count(0)


def test_the_lecture_mlp_fits_a_laptop_screen(page, mlp_page):
    """The whole graph, forward and backward, at a glance: no node needs a scroll or a pan."""
    open_file(page, mlp_page)
    expect(drawn_nodes(page)).to_have_count(len(shown_view(page)["nodes"]))
    outside = page.evaluate("""() => {
        const canvas = document.querySelector('#graph-canvas').getBoundingClientRect();
        const inside = box => box.left >= Math.max(canvas.left, 0) - 1
            && box.top >= Math.max(canvas.top, 0) - 1
            && box.right <= Math.min(canvas.right, innerWidth) + 1
            && box.bottom <= Math.min(canvas.bottom, innerHeight) + 1;
        return [...document.querySelectorAll('#graph-canvas g.node')]
            .filter(node => !inside(node.getBoundingClientRect()))
            .map(node => node.dataset.id);
    }""")
    assert outside == []


def test_the_theme_toggle_changes_the_background(page, mlp_page):
    open_file(page, mlp_page)
    light = colours(page)
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    dark = colours(page)
    assert dark != light
    page.click("#theme-toggle")
    assert colours(page) == light


def test_without_a_choice_the_page_follows_the_system_theme(page, mlp_page):
    open_file(page, mlp_page)
    light = colours(page)
    page.emulate_media(color_scheme="dark")
    # the system's change reaches the page as an event: wait for it
    page.wait_for_function("document.documentElement.dataset.theme === 'dark'")
    dark = colours(page)
    assert dark != light
    page.click("#theme-toggle")  # chosen: the system's theme no longer moves it
    page.emulate_media(color_scheme="light")
    assert colours(page) == light
    page.click("#theme-toggle")
    page.emulate_media(color_scheme="light")
    assert colours(page) == dark


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A short run of the digits MLP: its report page and its log's records."""
    directory = tmp_path_factory.mktemp("report")
    report, log = directory / "run.html", directory / "log.jsonl"
    ok(chainrule("train", MLP_DIGITS, "--data", DIGITS_TRAIN, "--val", DIGITS_TEST,
                 "--epochs", EPOCHS, "--batch-size", 256, "-q", "--log-jsonl", log,
                 "--report", report, "-o", directory / "trained.npz"))
    return report, log


def chart_points(tab, scale) -> dict:
    """{(metric, series): number of points} of the charts at `scale`."""
    counts = tab.locator(f"#training-view figure.chart[data-scale={scale}] polyline.series")\
        .evaluate_all("""lines => lines.map(line => [
            line.closest('figure').dataset.metric, line.dataset.series,
            line.getAttribute('points').trim().split(/\\s+/).filter(Boolean).length])""")
    return {(metric, series): count for metric, series, count in counts}


def expect_charts(tab, steps):
    # A page of curves alone has no tabs to choose between.
    if tab.locator("#tab-training-view").is_visible():
        tab.click("#tab-training-view")
    expect(tab.locator("#training-view figure.chart figcaption").first).to_be_visible()
    epochs = chart_points(tab, "epoch")
    assert epochs and set(epochs.values()) == {EPOCHS}, epochs
    assert {series for _, series in epochs} >= {"train", "val"}
    per_step = chart_points(tab, "step")
    assert per_step and set(per_step.values()) == {steps}, per_step
    expect(tab.locator("#training-view figure.chart details table").first).to_be_attached()


def logged_steps(log) -> int:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return max(record["steps"] for record in records if "steps" in record)


def test_the_report_charts_every_epoch_and_step(page, training_run, tmp_path,
                                                update_screenshots):
    report, log = training_run
    open_file(page, report)
    expect_charts(page, logged_steps(log))
    save_screenshot(page, screenshot_path("report-digits.png", tmp_path, update_screenshots))


def test_the_report_command_draws_the_same_charts_from_a_log(page, training_run, tmp_path):
    _, log = training_run
    report = tmp_path / "from-log.html"
    ok(chainrule("report", log, "-o", report))
    open_file(page, report)
    expect_charts(page, logged_steps(log))


@pytest.mark.slow
def test_a_large_graph_renders_and_fits(page, tmp_path):
    open_file(page, graph_page(tmp_path, RESNET, "--grad"))
    view = shown_view(page)
    page.click("#expand-all")
    expect(drawn_nodes(page)).to_have_count(len(view["nodes"]))
    page.click("#zoom-fit")
    fits = page.evaluate("""() => {
        const canvas = document.querySelector('#graph-canvas').getBoundingClientRect();
        const graph = document.querySelector('#graph-canvas g#viewport').getBoundingClientRect();
        return graph.width > 0 && graph.left >= canvas.left - 1 && graph.top >= canvas.top - 1
            && graph.right <= canvas.right + 1 && graph.bottom <= canvas.bottom + 1;
    }""")
    assert fits

    # A group at the top that holds a node of its own: collapsed, the node is not drawn;
    # expanded, it is.
    top = {group["id"] for group in view["groups"] if group["parent"] is None}
    inside = next(node for node in view["nodes"] if node["group"] in top)
    page.click("#collapse-all")
    box = page.locator(f'#graph-canvas g.group-box[data-group="{inside["group"]}"]')
    expect(box).to_have_count(1)
    expect(drawn(page, inside["id"])).to_have_count(0)
    assert drawn_nodes(page).count() < len(view["nodes"])
    box.click()
    expect(box).to_have_count(0)
    expect(drawn(page, inside["id"])).to_have_count(1)
    page.click("#collapse-all")
    box.focus()
    page.keyboard.press("Enter")
    expect(box).to_have_count(0)


@pytest.mark.slow
def test_a_loops_iterations_collapse_into_groups(page, tmp_path):
    open_file(page, graph_page(tmp_path, GRU))
    view = shown_view(page)
    # The forward pass's iterations (the backward pass's are labelled "∂ t=7" and so on).
    iterations = [group for group in view["groups"] if group["kind"] == "iteration"
                  and group["parent"] is None and group["label"].startswith("t=")]
    assert [group["label"] for group in iterations] == [f"t={step}" for step in range(8)]
    page.click("#collapse-all")
    boxes = page.locator("#graph-canvas g.group-box")
    for group in iterations:
        box = boxes.and_(page.locator(f'[data-group="{group["id"]}"]'))
        expect(box).to_have_count(1)
        expect(box).to_contain_text(group["label"])
    drawn_before = drawn_nodes(page).count() + boxes.count()
    third = boxes.and_(page.locator(f'[data-group="{iterations[3]["id"]}"]'))
    third.click()
    expect(third).to_have_count(0)
    assert drawn_nodes(page).count() + boxes.count() > drawn_before


def test_an_onnx_model_has_its_graph_and_no_source(page, tmp_path):
    open_file(page, graph_page(tmp_path, ONNX_MLP, "--loss", "cross_entropy"))
    data = page_data(page)
    assert data.get("source") is None
    view = shown_view(page)
    expect(drawn_nodes(page)).to_have_count(len(view["nodes"]))
    expect(page.locator("#source-pane .source-line")).to_have_count(0)
    backward = next(node for node in view["nodes"] if node["side"] == "backward")
    drawn(page, backward["id"]).click()
    expect(details(page, "ir")).to_contain_text(backward["ir"])
    expect(details(page, "source")).to_have_count(0)


def screenshot_is_a_picture(tab, png: bytes) -> None:
    """The PNG is 1366x768 and not blank: decoded by the browser, it has many colours, and no
    one colour covers nearly all of it."""
    width, height, distinct, commonest = tab.evaluate("""async source => {
        const image = new Image();
        image.src = source;
        await image.decode();
        const canvas = document.createElement('canvas');
        canvas.width = image.width; canvas.height = image.height;
        const context = canvas.getContext('2d');
        context.drawImage(image, 0, 0);
        const pixels = new Uint32Array(
            context.getImageData(0, 0, image.width, image.height).data.buffer);
        const counts = new Map();
        for (const pixel of pixels) counts.set(pixel, (counts.get(pixel) || 0) + 1);
        return [image.width, image.height, counts.size,
                Math.max(...counts.values()) / pixels.length];
    }""", "data:image/png;base64," + base64.b64encode(png).decode())
    assert (width, height) == (1366, 768)
    assert distinct >= 16 and commonest < 0.98, (distinct, commonest)


def save_screenshot(tab, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = tab.screenshot(path=path)
    screenshot_is_a_picture(tab, png)


def screenshot_path(name, tmp_path, update_screenshots):
    return (SCREENSHOTS if update_screenshots else tmp_path) / name


def test_screenshot_of_the_lecture_mlp(page, mlp_values_page, tmp_path, update_screenshots):
    open_file(page, mlp_values_page)
    view = shown_view(page)
    drawn(page, named(view, "dJ/dh")["id"]).click()
    page.select_option("#stepper-param", "W1")
    steps = next(param["steps"] for param in view["params"] if param["name"] == "W1")
    for _ in steps:
        page.click("#step-next")
    expect(page.locator("#step-list li")).to_have_count(len(steps))
    page.click("#zoom-fit")
    save_screenshot(page, screenshot_path("page-mlp.png", tmp_path, update_screenshots))


def test_screenshot_of_lenet(page, tmp_path, update_screenshots):
    open_file(page, graph_page(tmp_path, LENET, "--grad"))
    expect(drawn_nodes(page).first).to_be_visible()
    # Each batch norm and flatten drawn as one box, the whole network on one screen.
    page.click("#collapse-all")
    expect(page.locator("g.group-box")).to_have_count(6)
    page.click("#zoom-fit")
    save_screenshot(page, screenshot_path("page-lenet.png", tmp_path, update_screenshots))
