"""Real-browser check of the MLflow UI a new user meets, one screenshot per page (docs/ui.md).

    python scripts/ui_check.py [--project DIR] [--out DIR]

Starts `mlflow ui` on DIR/mlflow.db, drives headless chromium (selenium, fresh profile) through the
pages, prints `ok:`/`FAIL:` per expectation; exit 1 if any failed, 2 if the check could not start.
The REST API only finds ids: everything checked is read off the pages the browser shows.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

EXPERIMENT = "deconvolution"
RUN_NAME = re.compile(r"(?P<variant>[\w.-]+)/seed-(?P<seed>\d+)")  # pipeline.paths.run_name
MODEL_NAME = re.compile(r"[\w.-]+-seed\d+")  # pipeline.tracking.model_name
NUMBER = r"-?\d[\d.e+-]*|NaN"
ML = "workflowType=machine_learning"  # MLflow 3.17's switch to its model-training pages (docs/ui.md)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
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


def runs_table(page: Page, exp: str) -> list[str]:
    """The model-training link: the runs table, every run named <variant>/seed-<n>. Returns the variants."""
    page.driver.get(f"{page.base}#/experiments/{exp}?{ML}")
    page.wait(lambda: "/runs" in page.driver.current_url and page.links(f"/experiments/{exp}/runs/"))
    page.shot("02-runs.png")
    url = page.driver.current_url.split("#", 1)[1]
    check("/runs" in url.split("?")[0], "the experiment opens on its runs table", url[:60])
    names = page.links(f"/experiments/{exp}/runs/")
    check(bool(names) and all(RUN_NAME.fullmatch(n) for n in names), "runs named <variant>/seed-<n>", names)
    return sorted({m["variant"] for n in names if (m := RUN_NAME.fullmatch(n))})


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
    return {key: metric(text, key, 0) for key in ("test_accuracy", "val_accuracy", "loss")}


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
    """A logged model's page: the metrics of its trained run's end, not those of step 0."""
    if model_id is None:
        return check(False, "the run has a logged model", "none")
    text = page.open(f"experiments/{exp}/models/{model_id}?{ML}", "Metrics", "Source run")
    page.shot("06-model.png")
    shown = {key: metric(text, key, 3) for key in run_metrics}
    same = all(
        v is not None and shown[k] is not None and abs(shown[k] - v) <= 1e-9 * max(1, abs(v))
        for k, v in run_metrics.items()
    )
    check(same, "the model's metrics are its run's final values", f"model {shown}, run {run_metrics}")


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


def charts(page: Page, exp: str, variants: list[str]) -> None:
    """The runs' chart view: no chart of a compare-stage summary metric (<variant>.<figure>)."""
    search = 'input[placeholder="Search metric charts"]'
    page.open(f"experiments/{exp}/runs?{ML}&compareRunsMode=CHART", "Add chart")
    page.wait(lambda: page.find(search))
    page.shot("08-charts.png")
    for i, variant in enumerate(variants):
        page.find(search)[0].send_keys(Keys.CONTROL, "a")
        page.find(search)[0].send_keys(f"{variant}.")  # replaces the selected text
        page.wait(lambda v=variant: "No metric charts" in page.text() or re.search(rf"^{v}\.\w", page.text(), re.M))
        if i == 0:
            page.shot("09-charts-summary-filter.png")
        found = sorted(set(re.findall(rf"^{re.escape(variant)}\.\w+$", page.text(), re.M)))
        check(not found, f"no summary metric {variant}.* among the training runs' charts", found or "none")


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
            variants = runs_table(page, exp)
            run_metrics = run_page(page, exp, run)
            models_tab(page, exp)
            model_page(page, exp, model_id, run_metrics)
            registry(page, variants)
            charts(page, exp, variants)
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
