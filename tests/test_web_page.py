"""The web page at `/`, in a real browser (Debian's chromium, driven by Playwright) against a live server with an API
key: example prompt, LoRA picker, live progress over EventSource (with a read token, since EventSource sends no
headers), the image and its parameters."""
import json
import shutil
import time

import pytest

from koclip_lib.serve import PipelineEngine, Settings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(params=["s3cret", None], ids=["with-key", "no-key"])
def live(tiny_pipe, tmp_path, request, serve_app):
    registry = tmp_path / "loras.json"
    registry.write_text(json.dumps({"crayon": {"path": "missing", "trigger": "크레용", "description": "test"}}))
    settings = Settings(db_path=str(tmp_path / "jobs.sqlite3"), warmup=False, default_steps=2, max_batch=2,
                        initial_s_per_image_step=0.01, api_key=request.param, max_side=256, max_steps=10,
                        lora_registry=str(registry), token_ttl_s=60)
    app = create_app(PipelineEngine(tiny_pipe), settings)
    host, port = serve_app(app)
    return f"http://{host}:{port}", app


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; scripts/setup.sh does)")
def test_the_page_generates_an_image_with_live_progress(live, tmp_path):
    from playwright.sync_api import sync_playwright

    url, app = live
    key = app.state.service.settings.api_key
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        if key:
            page.wait_for_function("document.getElementById('status').textContent.includes('401')")
            assert page.locator("#lora option").count() == 1  # no key yet: the LoRA list is refused, and the page says so
            page.fill("#key", key)
            page.locator("#key").dispatch_event("change")
        page.wait_for_function("document.querySelectorAll('#lora option').length === 2")
        page.click("#examples button >> nth=0")
        assert page.input_value("#prompt") == "왼쪽에 빨간 별이 있다"
        page.fill("#negative", "흐릿한")
        page.fill("#steps", "4")
        page.fill("#seed", "1234")
        page.select_option("#size", "64")
        page.click("#generate")
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        width = page.evaluate("new Promise(r => { const i = document.getElementById('image'); "
                              "i.complete ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth); })")
        assert width == 64
        text = page.inner_text("#parameters")
        assert text.startswith("왼쪽에 빨간 별이 있다\nNegative prompt: 흐릿한") and "Seed: 1234" in text and "Size: 64x64" in text
        assert page.evaluate("document.getElementById('progress').max") == 4  # progress events reached the page
        assert "완료" in page.inner_text("#status")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'page.png'}")
        browser.close()
    jobs = [j for j in app.state.service.jobs.values()]
    assert len(jobs) == 1 and jobs[0].state == "succeeded" and jobs[0].spec.seed == 1234


def test_events_take_a_read_token_but_not_a_wrong_one(live):
    import httpx

    url, app = live
    if not app.state.service.settings.api_key:
        with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
            assert client.post("/v1/tokens").json() == {"token": "", "expires_in": 0}  # nothing to prove without a key
        return
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as client:
        key = {"Authorization": "Bearer s3cret"}
        job = client.post("/v1/images", json={"prompt": "a red star", "steps": 2}, headers=key).json()["job_id"]
        assert client.get(f"/v1/jobs/{job}/events").status_code == 401
        assert client.get(f"/v1/jobs/{job}/events?token=1.abc").status_code == 401
        assert client.post("/v1/tokens").status_code == 401
        token = client.post("/v1/tokens", headers=key).json()
        assert token["expires_in"] == 60
        with client.stream("GET", f"/v1/jobs/{job}/events", params={"token": token["token"]}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        # the token reads events only: it does not submit
        assert client.post("/v1/images", params={"token": token["token"]}, json={"prompt": "a"}).status_code == 401
        expired = f"{int(time.time()) - 1}.{token['token'].partition('.')[2]}"
        assert client.get(f"/v1/jobs/{job}/events", params={"token": expired}).status_code == 401
