"""Real-browser check of the MLflow UI a new user meets, one screenshot per page (docs/ui.md).

    python scripts/ui_check.py [--project DIR] [--out DIR]

Starts `mlflow ui` on DIR/mlflow.db, drives headless chromium (selenium, fresh profile) through the
pages, prints `ok:`/`FAIL:` per expectation; exit 1 if any failed, 2 if the check could not start.
The REST API finds ids and gives what a page is compared with (run times, metric values and histories);
DIR's run.json and metrics files give each seed's time in its train stage. Everything else checked is
read off the pages the browser shows, or off the chart state the UI saves in the browser's storage.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's own layout of files
from pipeline import paths  # noqa: E402

EXPERIMENT = "deconvolution"
RUN_NAME = re.compile(r"(?P<variant>[\w.-]+)/seed-(?P<seed>\d+)")  # pipeline.paths.run_name
MODEL_NAME = re.compile(r"[\w.-]+-seed\d+")  # pipeline.training_logging.model_name
NUMBER = r"-?\d[\d.e+-]*|NaN"
ML = "workflowType=machine_learning"  # MLflow 3.17's switch to its model-training pages (docs/ui.md)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# a run lasts its seed's training and testing plus saving and logging: at most this much longer or shorter
DURATION_SLACK_SECONDS = 10.0
# the chart view draws the first 10 runs of the table until the user shows more (MLflow's FIRST_10_RUNS)
CHART_RUNS = 10
failures: list[str] = []


class SetupError(Exception):
    """The check cannot run: no store, no experiment or run, the UI server did not start."""


def check(ok: bool, what: str, seen: object) -> None:
    print(f"{'ok' if ok else 'FAIL'}: {what} -- seen: {seen}", flush=True)
    if not ok:
        failures.append(what)


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + "api/2.0/mlflow/" + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our server on 127.0.0.1)
        return json.load(response)


def start_ui(project: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` on the project's store, from the project folder as `make ui`, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", f"sqlite:///{project}/mlflow.db"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=project, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "health", timeout=5):  # noqa: S310
                return proc, base
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise SetupError(f"mlflow ui did not come up; its log:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (uvicorn workers, job runner), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def search_runs(base: str, exp: str) -> list[dict]:
    """Every run of the experiment, as the REST API gives them (all pages)."""
    runs, token = [], None
    while True:
        body = {"experiment_ids": [exp], "max_results": 1000, **({"page_token": token} if token else {})}
        found = api(base, "runs/search", body)
        runs += found.get("runs", [])
        token = found.get("next_page_token")
        if not token:
            return runs


def run_metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run.get("data", {}).get("metrics", [])}


def find_ids(base: str) -> tuple[str, dict, str | None]:
    """The experiment's id, a finished training run, and the id of that run's logged model."""
    try:
        exp = api(base, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]["experiment_id"]
    except urllib.error.HTTPError as exc:
        raise SetupError(
            f"no experiment {EXPERIMENT!r} in the store (HTTP {exc.code}): run the pipeline first"
        ) from None
    runs = api(base, "runs/search", {"experiment_ids": [exp], "max_results": 1000}).get("runs", [])
    run = next(
        (r for r in runs if RUN_NAME.fullmatch(r["info"]["run_name"]) and r["info"]["status"] == "FINISHED"), None
    )
    if run is None:
        raise SetupError(f"no finished run named <variant>/seed-<n> in {EXPERIMENT!r}")
    found = api(
        base, "logged-models/search", {"experiment_ids": [exp], "filter": f"source_run_id = '{run['info']['run_id']}'"}
    )
    return exp, run, found["models"][0]["info"]["model_id"] if found.get("models") else None


class Page:
    """The browser: open a route and wait for what it shows, read its text, save a screenshot."""

    def __init__(self, profile: str, base: str, out: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={profile}")
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        size = {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False}  # the page, not the window
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
        self.base, self.out = base, out

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait(self, condition, timeout: float = 60) -> bool:
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(lambda _: condition())
            time.sleep(0.5)  # settle: late cells and charts paint
            return True
        except TimeoutException:
            return False

    def open(self, route: str, *texts: str) -> str:
        self.driver.get(f"{self.base}#/{route}")
        if not self.wait(lambda: all(t in self.text() for t in texts)):
            print(f"  (timed out waiting for {texts} on #/{route})")
        return self.text()

    def find(self, css: str) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def links(self, href_part: str) -> list[str]:
        return [a.text for a in self.find(f'a[href*="{href_part}"]') if a.text]

    def click(self, element) -> None:
        try:
            element.click()
        except WebDriverException:  # covered by a first visit's popover
            self.driver.execute_script("arguments[0].click()", element)

    def shot(self, name: str) -> None:
        mouse = ActionBuilder(self.driver)
        mouse.pointer_action.move_to_location(1, 1)  # away: no hover tooltip in the picture
        mouse.perform()
        self.driver.save_screenshot(str(self.out / name))
        print(f"  screenshot {self.out / name}")


def landing(page: Page, exp: str) -> None:
    """The bare experiment link (the home page's and the Experiments list's), in the fresh profile."""
    page.driver.get(f"{page.base}#/experiments/{exp}")
    page.wait(lambda: "No data" in page.text() or page.links(f"/experiments/{exp}/runs/"))
    page.shot("01-landing.png")
    url = page.driver.current_url.split("#", 1)[1]
    print(f"note: the bare link lands on {'Runs' if '/runs' in url else 'the GenAI pages'} ({url}); docs/ui.md")
    for close in page.find('[data-component-id="mlflow.assistant.chat_panel.close"]'):
        page.click(close)  # the MLflow Assistant panel, open on a first visit


def table_rows(page: Page) -> dict[str, dict[str, str]]:
    """Every row of the runs table, {run id: {"name": ..., "duration": ...}}: the grid draws only the
    rows in view, so it is scrolled down to the end, reading as it goes."""
    rows: dict[str, dict[str, str]] = {}
    read = """
        const rows = {};
        for (const row of document.querySelectorAll('.ag-row[row-id]')) {
          const id = row.getAttribute('row-id'), seen = rows[id] || (rows[id] = {});
          const link = row.querySelector('a[href*="/runs/"]'), cell = row.querySelector('.ag-cell[col-id="duration"]');
          if (link && link.innerText.trim()) seen.name = link.innerText.trim();
          if (cell) seen.duration = cell.innerText.trim();
        }
        const viewport = document.querySelector('.ag-body-viewport');
        const top = viewport ? viewport.scrollTop : 0;
        if (viewport) viewport.scrollTop = top + viewport.clientHeight * 0.8;
        return [rows, viewport ? viewport.scrollTop !== top : false];"""
    for _ in range(200):
        found, moved = page.driver.execute_script(read)
        for run_id, seen in found.items():
            rows.setdefault(run_id, {}).update(seen)
        if not moved:
            break
        time.sleep(0.3)  # the rows scrolled into view render
    page.driver.execute_script("const v = document.querySelector('.ag-body-viewport'); if (v) v.scrollTop = 0")
    return rows


def runs_table(page: Page, exp: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The model-training link: the runs table, every run named <variant>/seed-<n>. Returns the
    variants and the table's rows (name and Duration by run id)."""
    page.driver.get(f"{page.base}#/experiments/{exp}?{ML}")
    page.wait(lambda: "/runs" in page.driver.current_url and page.links(f"/experiments/{exp}/runs/"))
    page.wait(lambda: page.find('.ag-cell[col-id="duration"]'), timeout=20)
    page.shot("02-runs.png")
    url = page.driver.current_url.split("#", 1)[1]
    check("/runs" in url.split("?")[0], "the experiment opens on its runs table", url[:60])
    rows = table_rows(page)
    names = [row.get("name", "") for row in rows.values()]
    check(bool(names) and all(RUN_NAME.fullmatch(n) for n in names), "runs named <variant>/seed-<n>", names)
    return sorted({m["variant"] for n in names if (m := RUN_NAME.fullmatch(n))}), rows


UNITS = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}


def shown_seconds(text: str | None) -> tuple[float, float] | None:
    """A Duration cell as MLflow 3.17 writes it (Utils.formatDuration: 840ms, 5.2s, 2.0min, 1.1h, 1.0d):
    (seconds, how far its rounding may be from the exact time)."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min|h|d)", text or "")
    if not found:
        return None
    unit = UNITS[found.group(2)]
    return float(found.group(1)) * unit, (0.5 if found.group(2) == "ms" else 0.05) * unit + 1e-6


def stage_seconds(project: Path, variant: str, seed: int, run_id: str) -> float | None:
    """A seed's time in its train stage, from the files the stage wrote: training (train_seconds +
    trace_seconds + validation_seconds of run.json) plus testing (test images / images per second of
    the metrics file). None when the project's files are of another run (an older one, or another
    experiment's) or missing."""
    try:
        run = json.loads((paths.model_dir(variant, seed, project / paths.MODELS) / "run.json").read_text())
        tested = json.loads(paths.metrics_file(variant, seed, project / paths.METRICS).read_text())
    except (OSError, ValueError):
        return None
    if run.get("run_id") != run_id or tested.get("run_id") != run_id:
        return None
    training = sum(float(run[key]) for key in ("train_seconds", "trace_seconds", "validation_seconds"))
    return training + tested["test_examples"] / tested["inference_images_per_second"]


def durations(project: Path, runs: list[dict], rows: dict[str, dict[str, str]]) -> None:
    """Every training run of the project's files lasts its seed's training and testing (within
    DURATION_SLACK_SECONDS) by the API's start and end times, and the runs table's Duration shows
    that time, in seconds for a seed that took under 50 s (MLflow writes minutes from 60 s on)."""
    compared, wrong, table, skipped = [], [], [], 0
    for run in runs:
        info = run["info"]
        name = RUN_NAME.fullmatch(info.get("run_name", ""))
        if name is None or not info.get("end_time"):
            continue
        stage = stage_seconds(project, name["variant"], int(name["seed"]), info["run_id"])
        if stage is None:
            skipped += 1
            continue
        lasted = (int(info["end_time"]) - int(info["start_time"])) / 1000
        text = rows.get(info["run_id"], {}).get("duration")
        seen = f"{info['run_name']} {lasted:.1f}s (table: {text}), stage {stage:.1f}s"
        compared.append(seen)
        if abs(lasted - stage) > DURATION_SLACK_SECONDS:
            wrong.append(seen)
        shown = shown_seconds(text)
        in_seconds = (text or "").endswith("s") and not (text or "").endswith("ms")
        if shown is None or abs(shown[0] - lasted) > shown[1] or (stage < 50 and not in_seconds):
            table.append(seen)
    if not compared:
        seen = f"none of models/<variant>/seed-<n>/run.json's runs ({skipped} other runs)"
        return check(False, "the store has the runs of this project's files", seen)
    others = f" ({skipped} other run(s) in the store, not of this project's files)" if skipped else ""
    slack = f"{DURATION_SLACK_SECONDS:.0f} s"
    check(
        not wrong, f"every training run lasts its seed's training + testing, within {slack}{others}", wrong or compared
    )
    check(not table, "the runs table's Duration shows each run's time, in seconds", table or "as above")


def metric(text: str, name: str, hops: int) -> float | None:
    """A metric's value in a metrics table: the first number within `hops` cells after its name."""
    found = re.search(rf"^{re.escape(name)}\n(?:.*\n){{0,{hops}}}?({NUMBER})$", text, re.M)
    return float(found.group(1)) if found else None


def run_page(page: Page, exp: str, run: dict) -> dict[str, float | None]:
    """A run's overview: its datasets and its logged model. Returns the metrics it shows."""
    name, run_id = run["info"]["run_name"], run["info"]["run_id"]
    page.open(f"experiments/{exp}/runs/{run_id}?{ML}", name, "About this run", "Datasets")
    for badge in page.driver.find_elements(By.XPATH, "//*[starts-with(normalize-space(text()), '+')]"):
        if re.fullmatch(r"\+\d+", badge.text.strip()):  # "+2" after the first dataset lists the others
            page.click(badge)
            page.wait(lambda: len(re.findall(r"\([0-9a-f]{12,}\)\n", page.text())) > 1, timeout=10)
    page.shot("03-run.png")
    text = page.text()
    datasets = sorted(set(re.findall(r"^(.+ \([0-9a-f]{12,}\))\n(\w+)$", text.split("Datasets", 1)[-1], re.M)))
    seen = " ".join(" ".join(d) for d in datasets).lower()
    shown = datasets or "Datasets: " + text.split("\nDatasets\n", 1)[-1].split("\n", 1)[0]
    check(
        all(s in seen for s in ("train", "validation", "test")), f"{name} shows its train/validation/test data", shown
    )
    for section in page.driver.find_elements(By.XPATH, "//*[starts-with(text(), 'Logged models')]"):
        page.driver.execute_script("arguments[0].scrollIntoView()", section)
    page.shot("04-run-logged-model.png")
    variant, seed = RUN_NAME.fullmatch(name).groups()
    logged = text.split("Logged models", 1)[-1].split("About this run", 1)[0].splitlines()
    models = [line for line in logged if line == "model" or MODEL_NAME.fullmatch(line)]
    check(f"{variant}-seed{seed}" in models, f"{name} shows its logged model {variant}-seed{seed}", models)
    return {key: metric(text, key, 0) for key in ("test_accuracy", "train_seconds", "val_accuracy", "loss")}


def models_tab(page: Page, exp: str) -> None:
    """The experiment's Models tab: models named <variant>-seed<n>, a test_accuracy for each."""
    page.open(f"experiments/{exp}/models?{ML}", "Model name", "Source run")
    page.wait(lambda: page.links(f"/experiments/{exp}/models/m-"))
    names = page.links(f"/experiments/{exp}/models/m-")
    good = bool(names) and all(MODEL_NAME.fullmatch(n) for n in names) and len(set(names)) == len(names)
    check(good, "models named <variant>-seed<n>", names)
    values = []
    for _ in range(40):  # scroll right until the test_accuracy column shows: columns render lazily
        header = next((h for h in page.find(".ag-header-cell") if h.text == "test_accuracy"), None)
        if header is not None:
            cells = page.find(".ag-center-cols-container .ag-cell")
            values = [
                c.text
                for c in cells
                if html.unescape(c.get_attribute("col-id") or "") == header.get_attribute("col-id")
            ]
            break
        page.driver.execute_script(
            "document.querySelectorAll('.ag-body-horizontal-scroll-viewport').forEach(e => e.scrollLeft += 300)"
        )
        time.sleep(0.2)
    page.shot("05-models.png")
    numbers = [v for v in values if re.fullmatch(NUMBER, v)]
    check(bool(names) and len(numbers) == len(names), "the models table shows test_accuracy for every model", values)


def model_page(page: Page, exp: str, model_id: str | None, run_metrics: dict[str, float | None]) -> None:
    """A logged model's page: the metrics of its trained run's end (loss, val_accuracy: the last
    step's, not step 0's) and its single values (test_accuracy, train_seconds: logged at step 0 and
    linked to the model by its id, pipeline.training_logging.SINGLE_VALUE_STEP)."""
    if model_id is None:
        return check(False, "the run has a logged model", "none")
    text = page.open(f"experiments/{exp}/models/{model_id}?{ML}", "Metrics", "Source run")
    page.shot("06-model.png")
    shown = {key: metric(text, key, 3) for key in run_metrics}
    same = all(
        v is not None and shown[k] is not None and abs(shown[k] - v) <= 1e-9 * max(1, abs(v))
        for k, v in run_metrics.items()
    )
    check(same, "the model's metrics are its run's final and single values", f"model {shown}, run {run_metrics}")


def registry(page: Page, variants: list[str]) -> None:
    """The Model registry: deconvolution-<variant> for every variant, each with the alias `champion`."""
    page.open("models", "Registered Models", "Aliased versions")
    page.wait(lambda: f"{EXPERIMENT}-" in page.text() or "Create model" in page.text(), timeout=20)
    if page.wait(lambda: page.find(".du-bois-light-modal-close"), timeout=5):
        page.click(page.find(".du-bois-light-modal-close")[0])  # a first visit's "new Model Registry UI" promotion
        page.wait(lambda: not page.find(".du-bois-light-modal-wrap"), timeout=5)
    page.shot("07-registry.png")
    rows = [row.text.replace("\n", " ") for row in page.find("tr, [role=row]")]
    for variant in variants:
        row = next((r for r in rows if re.match(rf"{EXPERIMENT}-{re.escape(variant)}( |$)", r)), None)
        seen = row or page.text().split("Tags", 1)[-1][:100].replace("\n", " ")
        check(row is not None and "@ champion" in row, f"registry lists {EXPERIMENT}-{variant} @ champion", seen)


SEARCH_CHARTS = 'input[placeholder="Search metric charts"]'
CHART_AREA = '[data-testid="experiment-view-compare-runs-chart-area"]'
# a chart card's plot (plotly) and its title: the nearest enclosing element whose first line is a name
CHART_DATA = """
    const cards = {};
    for (const plot of document.querySelectorAll('.js-plotly-plot')) {
      let card = plot.parentElement;
      const title = (e) => (e.innerText || '').split('\\n')[0].trim();
      while (card && !/^[A-Za-z_][\\w./-]*$/.test(title(card))) card = card.parentElement;
      if (!card) continue;
      cards[title(card)] = (plot.data || []).map(t => ({
        type: t.type, x: Array.from(t.x || []), y: Array.from(t.y || [])}));
    }
    return cards;"""


def search_charts(page: Page, text: str) -> None:
    box = page.find(SEARCH_CHARTS)[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text) if text else box.send_keys(Keys.DELETE)  # replaces the selected text


def chart(page: Page, key: str) -> list[dict] | None:
    """The traces of the chart named `key` (plotly's type, x and y of each), found by the chart search
    (the view draws only the cards in sight); None if no such chart shows."""
    search_charts(page, key)
    page.wait(lambda: page.driver.execute_script(CHART_DATA).get(key), timeout=15)
    return page.driver.execute_script(CHART_DATA).get(key)


def show_card(page: Page, key: str) -> None:
    """Scroll the chart area so that the row of the chart named `key` is at the top, under the chart
    search box (which stays in place over the area)."""
    scroll = """const area = document.querySelector(arguments[1]); if (!area) return false;
        const title = Array.from(area.querySelectorAll('*'))
          .find(e => e.childElementCount === 0 && e.innerText === arguments[0]);
        if (!title) return false;
        const box = document.querySelector(arguments[2]), top = area.getBoundingClientRect().top;
        area.scrollTop += title.getBoundingClientRect().top - (box ? box.getBoundingClientRect().bottom : top) - 24;
        return true;"""
    page.wait(lambda: page.driver.execute_script(scroll, key, CHART_AREA, SEARCH_CHARTS), timeout=15)
    time.sleep(1.5)  # the cards scrolled into view draw


def describe(traces: list[dict] | None) -> str:
    if traces is None:
        return "no chart"
    if [t["type"] for t in traces] == ["bar"]:
        return f"bar chart: {len(traces[0]['x'])} bars"
    kinds = sorted({t["type"] for t in traces})
    points = max((len([x for x in t["x"] if x is not None]) for t in traces), default=0)
    return f"{'/'.join(kinds) or 'empty'}: {len(traces)} trace(s), up to {points} point(s) each"


def charts(page: Page, base: str, exp: str, run: dict, runs: list[dict], variants: list[str]) -> None:
    """The runs' default chart view: a metric with a history (loss, val_accuracy, ...) is a line chart
    with several points per run; a metric with one value per run (test_accuracy, train_seconds, ...)
    is a bar chart, one bar per run, each its run's value; grouped by the `variant` tag, one bar per
    variant. And no chart of a compare-stage summary metric (<variant>.<figure>)."""
    page.open(f"experiments/{exp}/runs?{ML}&compareRunsMode=CHART", "Add chart")
    page.wait(lambda: page.find(SEARCH_CHARTS) and page.find(".js-plotly-plot"))
    page.shot("08-charts.png")
    show_card(page, "test_accuracy")
    page.shot("09-charts-bars.png")
    page.driver.execute_script(f"const a = document.querySelector('{CHART_AREA}'); if (a) a.scrollTop = 0")

    # what the run's metrics are: several steps (a history) or one value
    run_id = run["info"]["run_id"]
    steps = {}
    for key in run_metrics(run):
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key, "max_results": 25000})
        history = api(base, f"metrics/get-history?{query}").get("metrics", [])
        steps[key] = sorted({int(m.get("step", 0)) for m in history})
    series = sorted(k for k, s in steps.items() if len(s) > 1)
    single = sorted(k for k, s in steps.items() if len(s) == 1)
    check(
        {"loss", "val_accuracy"} <= set(series) and {"test_accuracy", "train_seconds"} <= set(single),
        f"{run['info']['run_name']}: loss and val_accuracy have histories, test_accuracy and train_seconds one value",
        {k: (s if len(s) < 4 else f"{len(s)} steps {s[0]}..{s[-1]}") for k, s in steps.items()},
    )

    # the chart types the view chose, as it saved them for this browser
    state = page.driver.execute_script(
        "return localStorage.getItem(arguments[0])",
        f'MLflowLocalStorage-1.1-ExperimentPage-["{exp}"]-ReactComponentState',
    )
    saved = {
        c.get("metricKey"): c.get("type")
        for c in json.loads(state or "{}").get("compareRunCharts", [])
        if c.get("metricKey") and not c.get("deleted")
    }
    expected = {**{k: "LINE" for k in series}, **{k: "BAR" for k in single}}
    check(
        bool(saved) and all(saved.get(k) == t for k, t in expected.items()),
        "the default chart view's saved types: LINE for metrics with a history, BAR for single values",
        saved or "no chart state saved",
    )

    # what the charts draw
    values = {r["info"]["run_id"]: run_metrics(r) for r in runs}
    for key in series:
        traces = chart(page, key)
        points = [len([x for x in t["x"] if x is not None]) for t in traces or []]
        good = bool(traces) and all(t["type"] == "scatter" for t in traces) and min(points) >= 3
        check(good, f"{key} is a line chart with several points per run", describe(traces))
    for key in single:
        traces = chart(page, key)
        bars = [t for t in traces or [] if t["type"] == "bar"]
        drawn = dict(zip(bars[0]["y"], bars[0]["x"], strict=False)) if len(bars) == 1 else {}
        right = all(abs(values.get(r, {}).get(key, math.nan) - v) <= 1e-9 * max(1, abs(v)) for r, v in drawn.items())
        good = bool(traces) and len(bars) == len(traces) == 1 and 2 <= len(drawn) <= CHART_RUNS and right
        check(good, f"{key} is a bar chart, one bar per run, of the runs' values", describe(traces))

    for i, variant in enumerate(variants):
        search_charts(page, f"{variant}.")
        page.wait(lambda v=variant: "No metric charts" in page.text() or re.search(rf"^{v}\.\w", page.text(), re.M))
        if i == 0:
            page.shot("10-charts-summary-filter.png")
        found = sorted(set(re.findall(rf"^{re.escape(variant)}\.\w+$", page.text(), re.M)))
        check(not found, f"no summary metric {variant}.* among the training runs' charts", found or "none")
    search_charts(page, "")
    grouped(page, variants)


def grouped(page: Page, variants: list[str]) -> None:
    """Group by -> variant (the run tag), as docs/ui.md tells users: test_accuracy and train_seconds
    become one bar per variant (the mean of its runs)."""
    button = next((b for b in page.find("button") if b.text.strip() == "Group by"), None)
    if button is None:
        return check(False, "the chart view offers Group by", "no Group by button")
    page.click(button)
    page.wait(lambda: [i for i in page.find('[role="menuitemcheckbox"]') if i.text.strip() == "variant"], timeout=10)
    item = next((i for i in page.find('[role="menuitemcheckbox"]') if i.text.strip() == "variant"), None)  # Tags first
    if item is None:
        return check(False, "Group by offers the variant tag", "no 'variant' in its menu")
    page.click(item)
    page.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    page.wait(lambda: "Group: " in page.text(), timeout=15)
    for key in ("test_accuracy", "train_seconds"):
        traces = chart(page, key)
        bars = [t for t in traces or [] if t["type"] == "bar"]
        groups = sorted(str(y).removeprefix("tag.variant.") for y in bars[0]["y"]) if len(bars) == 1 else []
        # the first 10 groups show, as the first 10 runs do ungrouped
        good = (
            groups == variants
            if len(variants) <= CHART_RUNS
            else len(groups) == CHART_RUNS <= len(set(groups) & set(variants))
        )
        check(good, f"grouped by variant, {key} is one bar per variant", groups or describe(traces))
    search_charts(page, "")
    show_card(page, "test_accuracy")
    page.shot("11-charts-by-variant.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="folder with mlflow.db (default: .)")
    parser.add_argument("--out", type=Path, help="screenshots folder (default: <project>/ui-check)")
    args = parser.parse_args()
    project = args.project.resolve()
    out = (args.out or project / "ui-check").resolve()
    if not (project / "mlflow.db").is_file():
        print(f"no MLflow store at {project / 'mlflow.db'}: run the pipeline first (make run)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        proc = page = None
        try:
            proc, base = start_ui(project, Path(tmp) / "mlflow-ui.log")
            exp, run, model_id = find_ids(base)
            page = Page(str(Path(tmp) / "profile"), base, out)
            landing(page, exp)
            runs = search_runs(base, exp)
            variants, rows = runs_table(page, exp)
            durations(project, runs, rows)
            shown_metrics = run_page(page, exp, run)
            models_tab(page, exp)
            model_page(page, exp, model_id, shown_metrics)
            registry(page, variants)
            charts(page, base, exp, run, runs, variants)
        except SetupError as exc:
            print(f"cannot check the UI: {exc}", file=sys.stderr)
            return 2
        finally:
            if page is not None:
                page.driver.quit()
            if proc is not None:
                stop(proc)
    print(f"{len(failures)} check(s) failed: {failures}" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
