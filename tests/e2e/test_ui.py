"""The UI as a user meets it: `dagster dev` on 127.0.0.1 with a temporary DAGSTER_HOME,
asked over GraphQL, and driven in a real headless Chromium (Debian's, through Playwright's
`executable_path`; never a browser download): the asset graph shows every stage, and one
shard of raw_dataset materialized from the UI succeeds. The screenshots are kept under
test-artifacts/; UPDATE_SNAPSHOTS=1 also refreshes the docs' copies in docs/images/."""

import os
import shutil
import subprocess
import time

import pytest

from tests.e2e.dagster_dev import BIN, REPO, graphql
from tests.e2e.dagster_dev import dagster_dev as start_dagster_dev

QUERY = (
    "{ assetNodes { assetKey { path } groupName description isObservable isMaterializable "
    "kinds owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } } "
    "partitionDefinition { description } } }"
)
STAGES = [
    "oracle", "judge", "student", "raw_dataset", "reflected_instructions", "reflected_responses",
    "recycled_dataset", "student_scores", "selective_dataset", "baseline_adapter", "recycled_adapter",
    "selective_adapter", "benchmark_scores",
]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui") / "home"
    env = dict(os.environ, DAGSTER_HOME=str(home), REFLECTION_SHARDS="4")
    for name in ("REFLECTION_DUCKDB", "REFLECTION_ARTIFACTS"):
        env.pop(name, None)
    added = subprocess.run(
        [str(BIN / "reflection"), "datasets", "add", "sample", "bundled:sample"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert added.returncode == 0, added.stderr
    with start_dagster_dev(env) as port:
        yield port


def test_ui_serves_the_asset_graph(dagster_dev):
    nodes = graphql(dagster_dev, QUERY)["data"]["assetNodes"]
    by_name = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert sorted(by_name) == sorted(STAGES)
    groups = {name: node["groupName"] for name, node in by_name.items()}
    assert groups == {
        "oracle": "oracles", "judge": "oracles", "student": "oracles", "raw_dataset": "ingest",
        "reflected_instructions": "reflection", "reflected_responses": "reflection",
        "recycled_dataset": "reflection", "student_scores": "selection", "selective_dataset": "selection",
        "baseline_adapter": "training", "recycled_adapter": "training", "selective_adapter": "training",
        "benchmark_scores": "evaluation",
    }
    for name, node in by_name.items():
        assert len(node["description"] or "") > 80, f"{name} has no real description"
        if node["isMaterializable"]:
            assert node["kinds"] and node["owners"] == [{"team": "data-recycling"}], name
        else:
            assert node["isObservable"], name
    assert "dataset" in by_name["raw_dataset"]["partitionDefinition"]["description"]


AUTOMATION = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
    "schedules { name cronSchedule scheduleState { status } } "
    "sensors { name sensorState { status ticks(limit: 20) { status error { message } } } } } } } }"
)


def automation(port: int) -> tuple[dict, dict]:
    [repo] = graphql(port, AUTOMATION)["data"]["repositoriesOrError"]["nodes"]
    return {s["name"]: s for s in repo["schedules"]}, {s["name"]: s for s in repo["sensors"]}


def test_the_schedule_and_the_automation_sensor_run_without_a_click(dagster_dev):
    schedules, sensors = automation(dagster_dev)
    assert schedules["observe_oracles_nightly"]["scheduleState"]["status"] == "RUNNING"
    assert schedules["observe_oracles_nightly"]["cronSchedule"] == "0 3 * * *"
    assert sensors["recycle_stale"]["sensorState"]["status"] == "RUNNING"


def _is_shown(name: str, shown: set[str]) -> bool:
    """The graph shortens long names in the middle ('refl…_instructions')."""
    for text in shown:
        head, _, tail = text.partition("…")
        if text == name or (_ and name.startswith(head) and name.endswith(tail)):
            return True
    return False


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make test` installs Debian's package")
def test_materialize_one_shard_from_the_ui_in_a_browser(dagster_dev):
    from playwright.sync_api import expect, sync_playwright

    base = f"http://127.0.0.1:{dagster_dev}"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(60_000)

            def dismiss_welcome():
                skip = page.get_by_role("button", name="Skip")
                try:
                    skip.wait_for(timeout=4_000)
                    skip.click()
                except Exception:  # the welcome dialog shows once per instance, or not at all
                    pass

            # The asset graph, every group expanded: every stage is there.
            def expanded_graph():
                page.goto(f"{base}/asset-groups")
                dismiss_welcome()
                page.get_by_text("Global asset lineage").wait_for()
                page.get_by_text("evaluation").first.wait_for()  # the groups are drawn
                page.wait_for_timeout(1_000)
                if page.locator("[class*=AssetNode_assetName]").count() == 0:
                    page.keyboard.press("Alt+e")  # the graph's "Expand all groups" (a toggle, remembered)
                expect(page.locator("[class*=AssetNode_assetName]")).to_have_count(len(STAGES))
                return set(page.locator("[class*=AssetNode_assetName]").all_inner_texts())

            shown = expanded_graph()
            assert all(_is_shown(name, shown) for name in STAGES), shown

            # Materialize raw_dataset for dataset sample, shard 00, from the launch dialog.
            page.goto(f"{base}/assets/raw_dataset")
            dismiss_welcome()
            page.get_by_role("button", name="Materialize…").click()
            dialog = page.get_by_role("dialog").first
            pickers = dialog.locator("[class*=TagSelector_tagSelectorContainer]")
            pickers.nth(0).click()
            page.get_by_role("menuitem", name="sample").click()
            dialog.get_by_text("Launch runs to materialize raw_dataset").click()  # close the menu
            pickers.nth(1).click()
            page.get_by_role("menuitem", name="00").click()
            dialog.get_by_text("Launch runs to materialize raw_dataset").click()
            dialog.get_by_role("button", name="Launch 1 run").click()

            # The run succeeds, and its page in the UI says so.
            query = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
            deadline = time.monotonic() + 300
            while True:
                results = graphql(dagster_dev, query)["data"]["runsOrError"]["results"]
                ui_runs = [r for r in results if {"key": "dagster/partition", "value": "sample|00"} in r["tags"]]
                if ui_runs and ui_runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
                if time.monotonic() > deadline:
                    page.screenshot(path=str(ARTIFACTS / "ui-timeout.png"))
                    pytest.fail(f"the run launched from the UI did not finish in 300 s: {results}")
                time.sleep(2)
            assert [r["status"] for r in ui_runs] == ["SUCCESS"], ui_runs
            page.goto(f"{base}/runs/{ui_runs[0]['runId']}")
            expect(page.get_by_text("Success").first).to_be_visible()
            # The automation sensor has been ticking all along: without errors, and it did
            # not start the (never materialized) downstream stages on its own.
            deadline = time.monotonic() + 120
            while not (ticks := automation(dagster_dev)[1]["recycle_stale"]["sensorState"]["ticks"]):
                assert time.monotonic() < deadline, "the automation sensor did not tick in 120 s"
                time.sleep(3)
            assert not [t for t in ticks if t["status"] == "FAILURE"], ticks
            all_runs = graphql(dagster_dev, query)["data"]["runsOrError"]["results"]
            assert [r["runId"] for r in all_runs] == [ui_runs[0]["runId"]], all_runs

            page.goto(f"{base}/assets/raw_dataset")
            expect(page.get_by_text("sample|00").first).to_be_visible()  # the latest materialization
            page.screenshot(path=str(ARTIFACTS / "ui-raw-dataset.png"))
            expanded_graph()
            page.wait_for_timeout(1_500)  # the materialized shard's status settles in
            page.screenshot(path=str(ARTIFACTS / "ui-asset-graph.png"))
        finally:
            browser.close()
    if os.environ.get("UPDATE_SNAPSHOTS"):  # the docs (docs/ui.md) show these copies
        for name in ("ui-asset-graph.png", "ui-raw-dataset.png"):
            shutil.copyfile(ARTIFACTS / name, REPO / "docs" / "images" / name)
