"""The wheel as users install it: built by tools/build_wheel.py (``make wheel``, what the image installs),
installed into a fresh environment that cannot see this checkout, and run from an empty folder.

The environment reuses the main one's dependencies (a ``.pth`` line naming its site-packages: no
reinstall of torch), so only the wheel is new. The server finds its models, label lists, pages and
API documentation through the package alone, with no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.inproc import InProcessServer
from harness.process import ServerProcess, tool
from service import __version__
from service.core.resources import bundled_labels, bundled_store
from tests.support import ROOT
from tests.support.checkpoints import write_checkpoint
from tools.build_wheel import build_wheel

pytestmark = pytest.mark.slow
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in {".mp4", ".webm", ".avi"})
DEFAULT = "tsm_mobilenetv2_synthetic_motion"
ONLINE = f"{DEFAULT}_online"


@dataclass
class Installed:
    venv: Path
    wheel: Path
    home: Path  # an empty folder: every command runs there
    environ: dict[str, str]  # this process's, less anything that points at the checkout

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.home, env=self.environ, capture_output=True, text=True, timeout=timeout, check=False
        )

    def server(self, **settings: object) -> ServerProcess:
        return ServerProcess(None, command=[self.bin("tsm-serve"), "serve"], cwd=self.home, environ=self.environ,
                             log_level="INFO", **settings)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("installed")
    wheel = build_wheel(work / "dist")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       check=True, capture_output=True, text=True).stdout.strip()
    )  # fmt: skip
    # After the new environment's own site-packages: the main environment's packages, not its .pth files
    # (the editable install of this checkout is one of them, and stays invisible).
    (site / "main_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    home = work / "empty"
    home.mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TSM_", "PYTHON", "COV_", "COVERAGE"))}
    return Installed(venv, wheel, home, environ)


def test_the_wheel_is_imported_from_the_new_environment_not_the_checkout(installed: Installed) -> None:
    found = installed.run(installed.bin("python"), "-c", "import service; print(service.__file__)")
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed.venv), found.stdout
    version = installed.run(installed.bin("tsm-serve"), "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"tsm-serve {__version__}", version


@pytest.fixture(scope="module")
def bundled(installed: Installed) -> Iterator[ServerProcess]:
    """``tsm-serve serve`` from an empty folder: no store set, none in the folder, so the bundled one."""
    proc = installed.server()
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def checkout_answers() -> dict[str, dict[str, float]]:
    """The same examples through the checkout's server (in this process) on the same bundled store."""
    with InProcessServer(bundled_store(), default_model=DEFAULT) as srv:
        return {video.name: top_scores(srv.http.post("/classify?top_k=3", files={"file": video.read_bytes()}))
                for video in EXAMPLES}  # fmt: skip


def top_scores(response: httpx.Response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    return {p["label"]: p["score"] for p in response.json()["predictions"]}


def test_serves_the_bundled_store_and_says_where_it_is_and_why(bundled: ServerProcess, installed: Installed) -> None:
    store = installed.venv.glob("lib/python*/site-packages/service/bundled/model_store")
    line = next(line for line in bundled.output().splitlines() if "model store:" in line)
    assert str(next(store)) in line and "bundled with the package" in line and __version__ in line, line
    models = httpx.get(f"{bundled.url}/v1/models", timeout=10).json()
    assert {m["name"] for m in models["models"]} == {DEFAULT, ONLINE}
    assert httpx.get(f"{bundled.url}/v2", timeout=10).json()["version"] == __version__


def test_every_example_gets_the_answer_the_checkout_gives(
    bundled: ServerProcess, checkout_answers: dict[str, dict[str, float]]
) -> None:
    for video in EXAMPLES:
        answer = top_scores(httpx.post(f"{bundled.url}/classify?top_k=3", files={"file": video.read_bytes()},
                                       timeout=120))  # fmt: skip
        expected = checkout_answers[video.name]
        assert next(iter(answer)) == next(iter(expected)) == video.stem.replace("_", " "), (video.name, answer)
        assert answer == pytest.approx(expected, abs=1e-3), video.name


def test_the_command_line_client_is_installed_and_classifies(bundled: ServerProcess, installed: Installed) -> None:
    done = installed.run(installed.bin("tsm-classify"), *map(str, EXAMPLES), "--url", bundled.url, "--top-k", "1",
                         "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["predictions"][0]["label"] for a in answers] == [v.stem.replace("_", " ") for v in EXAMPLES]


def test_the_live_page_is_served(bundled: ServerProcess) -> None:
    page = httpx.get(f"{bundled.url}/live", timeout=10)
    assert page.status_code == 200 and "<video" in page.text and "/v1/live" in page.text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_documentation_loads_only_from_the_server(bundled: ServerProcess, page: str) -> None:
    html = httpx.get(f"{bundled.url}{page}", timeout=10)
    assert html.status_code == 200
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text) + re.findall(
        r"""url\s*:\s*["']([^"']+)["']""", html.text
    )
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        got = httpx.get(f"{bundled.url}{asset}", timeout=10)
        assert got.status_code == 200 and len(got.content) > 100, asset


def test_swagger_ui_draws_the_api_in_a_browser_that_reaches_nothing_but_the_server(bundled: ServerProcess) -> None:
    """Headless Chromium with every host name but the server's address unresolvable: the page that
    drew blank without a CDN lists the routes."""
    browser = tool("chromium", "apt-get install -y chromium (Debian package; `make test` installs it)")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=15000",
             "--dump-dom", f"{bundled.url}/docs"],
            capture_output=True, text=True, timeout=120, check=False,
        ).stdout  # fmt: skip
    assert 'class="swagger-ui' in dom and "/classify" in dom and "/v1/models" in dom, dom[-2000:]


@pytest.mark.parametrize(
    ("labels", "classes", "first_label"),
    [("kinetics400", 400, "abseiling"), ("something-something-v2", 174, "Approaching something with your camera")],
)
def test_import_checkpoint_finds_the_bundled_labels_and_the_entry_serves(
    installed: Installed, labels: str, classes: int, first_label: str
) -> None:
    """From the empty folder, ``import-checkpoint`` writes ./model_store, which the next server there
    then serves by itself (the second of the three store rules)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint("mobilenetv2", Path(tmp) / "tsm.pth", classes=classes)
        name = labels.replace("-", "_")
        done = installed.run(installed.bin("tsm-serve"), "import-checkpoint", str(checkpoint), "--arch", "mobilenetv2",
                             "--num-segments", "8", "--labels", labels, "--name", name, "--input-size", "112",
                             "--scale-size", "128")  # fmt: skip
    store = installed.home / "model_store"
    try:
        assert done.returncode == 0, done.stderr
        written = (store / name / "1" / "labels.txt").read_text().splitlines()
        assert written == bundled_labels()[name].read_text().splitlines() and written[0] == first_label
        proc = installed.server(default_model=name)
        try:
            assert "./model_store of the working directory" in proc.output()
            answer = httpx.post(f"{proc.url}/classify?top_k=2", files={"file": EXAMPLES[0].read_bytes()}, timeout=120)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"]["name"] == name
            assert all(p["label"] in written for p in answer.json()["predictions"])
        finally:
            assert proc.stop() == 0, proc.output()
    finally:
        shutil.rmtree(store, ignore_errors=True)  # the folder is empty again for the tests after this one


def test_an_empty_store_is_refused_with_where_it_looked_and_what_to_set(installed: Installed) -> None:
    (installed.home / "model_store").mkdir()
    try:
        done = installed.run(installed.bin("tsm-serve"), "serve", "--http-port", "0", "--grpc-port", "0")
    finally:
        (installed.home / "model_store").rmdir()
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert str(installed.home / "model_store") in error and "models found there: none" in error, error
    assert "TSM_MODEL_STORE" in error and "./model_store of the working directory" in error, error


def test_a_zipped_package_serves_from_its_zip(installed: Installed) -> None:
    """The wheel itself on PYTHONPATH (zipimport): bundled files are extracted to a temporary folder for
    the process's life, and the decode workers start from the zip too."""
    environ = {**installed.environ, "PYTHONPATH": str(installed.wheel)}
    proc = ServerProcess(None, command=[sys.executable, "-m", "service", "serve"], cwd=installed.home,
                         environ=environ, log_level="INFO")  # fmt: skip
    try:
        line = next(line for line in proc.output().splitlines() if "model store:" in line)
        extracted = Path(re.search(r"model store: (\S+/tsm-serve-bundled-[^/]+)/", line)[1])  # type: ignore[index]
        assert extracted.is_dir()
        answer = httpx.post(f"{proc.url}/classify?top_k=1", files={"file": EXAMPLES[0].read_bytes()}, timeout=120)
        assert top_scores(answer).keys() == {EXAMPLES[0].stem.replace("_", " ")}
        assert httpx.get(f"{proc.url}/live", timeout=10).status_code == 200
    finally:
        assert proc.stop() == 0, proc.output()
    assert not extracted.exists(), "the extracted files go with the process"
