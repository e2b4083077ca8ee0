"""The report page in a real headless browser: Debian's Chromium driven by Playwright.

`scripts/test.sh` installs Chromium when it is missing (scripts/setup_browser.sh), so CI runs this test;
it fails, rather than skips, where no browser can be found. The page must render with every image
loaded, no console error, and a screenshot that is not blank.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from matplotlib import image as mpimg

from nas_service.report_page import load_report_data, spec_baselines, write_report
from nas_service.results import ResultsStore
from search_spaces.genotypes import PUBLISHED_GENOTYPES

# The flags the machine notes give for a closed network: without them Chromium's background connections
# are refused many times a start (and logged as errors).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no Chromium: scripts/test.sh installs it (scripts/setup_browser.sh); or set CHROMIUM=/path"
    return found


def _store(tmp_path) -> ResultsStore:
    """A search with a weighting sweep over 3 seeds (epochs with telemetry and weights) and the retrains of
    what it found beside DARTS_V2: every kind of figure the page has."""
    store = ResultsStore(tmp_path, "page")
    genotype = PUBLISHED_GENOTYPES.get("DARTS_V2").genotype.to_dict()
    ops = ["none", "skip_connect", "sep_conv_3x3"]
    for weighting in ("scalar", "max_w"):
        for seed in (0, 1, 2):
            trial = f"s-{weighting}-{seed}"
            for epoch in (1, 2, 3):
                weights = np.full((14, 3), 1 / 3) + 0.05 * epoch * np.eye(14, 3)
                store.write_epoch(trial, 0, {
                    "stage": "search", "seed": seed, "epoch": epoch, "valid_acc": 0.5 + 0.1 * epoch + 0.01 * seed,
                    "arch_entropy_normal": 1 - 0.2 * epoch, "arch_entropy_reduce": 1 - 0.1 * epoch,
                    "param_free_share": 0.1 * epoch, "genotype": genotype,
                    "arch_weights": {"ops": ops, "normal": weights.tolist(), "reduce": weights.tolist()},
                })  # fmt: skip
            store.write_trial(trial, 0, {
                "stage": "search", "stage_kind": "cell_search", "status": "finished", "seed": seed,
                "arm": f"search:{weighting}", "config": {"seed": seed, "weighting": weighting},
                "best": {"valid_acc": 0.8 + 0.01 * seed + (0.02 if weighting == "max_w" else 0)}, "genotype": genotype,
                "wall_seconds": 30.0, "extra": {"arm_label": f"weighting={weighting}",
                                                "axes_json": json.dumps({"weighting": weighting})},
            })  # fmt: skip
            retrain = f"r-{weighting}-{seed}"
            store.write_epoch(retrain, 0, {"stage": "retrain", "seed": 0, "epoch": 1, "valid_top1": 0.9})
            store.write_trial(retrain, 0, {
                "stage": "retrain", "stage_kind": "retrain", "status": "finished", "seed": 0,
                "arm": f"retrain:{weighting}", "config": {"seed": 0}, "lineage_trial_id": trial,
                "lineage_stage": "search", "genotype": genotype, "params": 10_000 + seed, "multiply_adds": 2_000_000,
                "best": {"valid_top1": 0.9, "test_top1": 0.9 + 0.005 * seed}, "wall_seconds": 10.0,
                "extra": {"arm_label": f"from search: weighting={weighting}"},
            })  # fmt: skip
    store.write_experiment_record({"spec": {"stages": [{"name": "search", "sweep": {"weighting": ["scalar", "max_w"]},
                                                        "baseline": "weighting=scalar"}]}})  # fmt: skip
    return store


@pytest.mark.slow
def test_the_report_page_renders_in_headless_chromium_with_every_image(tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    data = load_report_data([_store(tmp_path)])
    page_path = write_report(data, tmp_path / "report", spec_baselines(data))
    figures = len(list((page_path.parent / "figures").glob("*.png")))
    assert figures >= 6  # curves x2, pareto, telemetry, weights, drawings
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) == figures and all(done and width > 0 for done, width, _ in images), images
    assert {"search (cell_search)", "retrain (retrain)", "Learning curves", "Versions"} <= set(headings)
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[0] > 900 and pixels.std() > 0.05  # a full page with content, not a blank one
