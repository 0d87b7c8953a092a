"""The emulator's dashboard in a real browser: Debian's chromium driven by Selenium through the
system chromedriver (`apt-get install chromium chromium-driver`; nothing downloads a browser).

Against an emulator process (`spotflow-emulator serve`, manual approval) and a device process
(`dashboard-device`, built from spotflow-bench): logs in with the admin token, sees the
device waiting for approval with its verification code, approves it with a device-id override
(keyboard only), watches its messages arrive in the live feed and the per-stream chart, opens one
message (decoded JSON payload, properties), sees its log records and filters them by level, refuses invalid JSON in the desired editor, sends
desired properties and checks that the device's callback printed them, sees the reported
update the device answers with, sends a cloud-to-device message and sees it delivered, and rolls a
software update out to the device and sees it succeed in the rollout view. Screenshots at 1280 and 390 px wide go to target/browser/.

    python3 scripts/browser_test.py      (needs `cargo build -p spotflow-emulator -p spotflow-bench`)

Environment: SPOTFLOW_EMULATOR_BIN, SPOTFLOW_DASHBOARD_DEVICE (default: target/debug/...),
CHROMIUM (default /usr/bin/chromium), CHROMEDRIVER (default /usr/bin/chromedriver).
"""

import json
import os
import pathlib
import queue
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything.

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
EMULATOR = os.environ.get("SPOTFLOW_EMULATOR_BIN", str(ROOT / "target/debug/spotflow-emulator"))
DEVICE = os.environ.get("SPOTFLOW_DASHBOARD_DEVICE", str(ROOT / "target/debug/dashboard-device"))
OUT = ROOT / "target/browser"
WAIT = 30  # seconds for any one step


class Process:
    """A child process whose stdout lines are read on a thread, waited for with deadlines."""

    def __init__(self, args, env=None, stdin=None):
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stdin=stdin, env=env, text=True, bufsize=1
        )
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern, timeout=WAIT):
        """The first match of `pattern` in a line (earlier lines included)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        for line in self.seen:
            m = regex.search(line)
            if m:
                return m
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; saw {self.seen[-10:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            m = regex.search(line)
            if m:
                return m

    def stop(self):
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def admin_post(url, token, ca, body):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca), timeout=WAIT) as r:
        return json.load(r)


def only_device(https, token, ca):
    """The hub id (`workspace:device`) of the only device."""
    request = urllib.request.Request(f"{https}/admin/devices", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca), timeout=WAIT) as r:
        devices = json.load(r)
    return devices[0]["hubDeviceId"]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root in CI the sandbox cannot start
        "--disable-dev-shm-usage",
        # The emulator's certificate comes from its own CA, which this throwaway profile does not
        # trust (a person trusts ca.pem once, or accepts the warning).
        "--ignore-certificate-errors",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def until(driver, what, condition, timeout=WAIT):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except Exception as e:  # noqa: BLE001 - report what was awaited
        OUT.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(OUT / "failure.png"))
        raise AssertionError(f"timed out waiting for {what} (screenshot: target/browser/failure.png)") from e


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    data = tempfile.mkdtemp(prefix="spotflow-browser-")
    quiet = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    emulator = Process([EMULATOR, "serve", "--data-dir", data, "--https-port", "0", "--mqtts-port", "0"], env=quiet)
    device = None
    driver = None
    try:
        https = emulator.wait_for(r"instance \(HTTPS\):\s+(\S+)").group(1)
        mqtt_port = emulator.wait_for(r"MQTT over TLS:\s+\S+:(\d+)").group(1)
        dashboard = emulator.wait_for(r"dashboard:\s+(\S+)").group(1)
        ca = os.path.join(data, "ca.pem")
        admin_token = pathlib.Path(data, "admin-token").read_text().strip()
        provisioning = admin_post(f"{https}/admin/provisioning-tokens", admin_token, ca, {})["provisioningToken"]

        env = dict(os.environ)
        env.update(
            INSTANCE=https,
            CA_FILE=ca,
            MQTT_PORT=mqtt_port,
            PROVISIONING_TOKEN=provisioning,
            DB=os.path.join(data, "device.db"),
            DEVICE_ID="asked-for-id",
        )
        device = Process([DEVICE], env=env, stdin=subprocess.PIPE)
        code = device.wait_for(r"OPERATION (\S+)").group(1)
        print(f"device waits for approval, verification code {code}")

        driver = browser()
        driver.get(dashboard)
        token_input = until(driver, "the login form", lambda d: d.find_element(By.ID, "token"))
        # Keyboard only: the token field has focus on load; Enter submits.
        until(driver, "focus on the token field", lambda d: d.switch_to.active_element == token_input)
        token_input.send_keys("wrong-token", Keys.ENTER)
        until(driver, "the wrong token refused", lambda d: "Wrong admin token" in d.find_element(By.ID, "login-error").text)
        token_input.clear()
        token_input.send_keys(admin_token, Keys.ENTER)
        until(driver, "the dashboard after login", lambda d: d.find_element(By.ID, "app").is_displayed())

        # The pending operation with the device's verification code; approve it with an override.
        card = until(
            driver,
            "the operation waiting for approval",
            lambda d: next((c for c in d.find_elements(By.CSS_SELECTOR, "#operations li") if code in c.text), None),
        )
        assert "asked-for-id" in card.text, card.text
        override = card.find_element(By.CSS_SELECTOR, "input")
        override.send_keys("browser-approved")
        override.send_keys(Keys.TAB)  # to the Approve button
        approve = driver.switch_to.active_element
        assert approve.text == "Approve", f"Tab from the override field reached {approve.text!r}"
        approve.send_keys(Keys.ENTER)
        assert device.wait_for(r"READY (\S+)").group(1) == "browser-approved"
        until(driver, "the operation gone", lambda d: not d.find_elements(By.CSS_SELECTOR, "#operations li"))
        print("approved with the override, the device registered as browser-approved")

        # The device online, its messages in the live feed and in the chart's legend.
        until(
            driver,
            "the device online",
            lambda d: any(
                "browser-approved" in r.text and "online" in r.text
                for r in d.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
            ),
        )
        until(
            driver,
            "5 live messages in the feed",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#feed li[data-stream='dashboard/telemetry']")) >= 5,
        )

        def streaming(d):
            for row in d.find_elements(By.CSS_SELECTOR, "#legend tbody tr"):
                cells = row.find_elements(By.TAG_NAME, "td")
                if cells and "dashboard/telemetry" in cells[0].text and float(cells[1].text or 0) > 0:
                    return True
            return False

        until(driver, "a message rate in the chart's legend", streaming)
        # Filters: another device's id hides everything, the stream filter keeps ours.
        stream_filter = driver.find_element(By.ID, "feed-stream")
        stream_filter.send_keys("no-such-stream")
        until(driver, "the feed filtered out", lambda d: not any(li.is_displayed() for li in d.find_elements(By.CSS_SELECTOR, "#feed li")))
        stream_filter.clear()
        stream_filter.send_keys("telemetry")
        first = until(
            driver,
            "a visible message",
            lambda d: next((li for li in d.find_elements(By.CSS_SELECTOR, "#feed li") if li.is_displayed()), None),
        )
        button = first.find_element(By.CSS_SELECTOR, "button.message")
        button.send_keys(Keys.ENTER)
        payload = until(driver, "the opened message's payload", lambda d: first.find_element(By.CSS_SELECTOR, "pre.payload"))
        decoded = json.loads(payload.text)
        assert "temperature" in decoded and "n" in decoded, payload.text
        assert button.get_attribute("aria-expanded") == "true"
        assert "dashboard/telemetry" in first.text and "Wire size" in first.text, first.text
        print(f"message opened: {decoded}")

        # Device logs: the device's records, live; the level filter keeps the warnings only.
        Select(driver.find_element(By.ID, "logs-device")).select_by_visible_text("browser-approved")
        until(driver, "log records of the device", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#logs li[data-level='INFO']")) >= 3)
        Select(driver.find_element(By.ID, "logs-level")).select_by_value("warn")
        until(
            driver,
            "only warnings after the level filter",
            lambda d: (items := d.find_elements(By.CSS_SELECTOR, "#logs li"))
            and all(li.get_attribute("data-level") == "WARN" for li in items),
        )
        warn = driver.find_element(By.CSS_SELECTOR, "#logs li")
        assert "temperature high" in warn.text and "dashboard" in warn.text, warn.text
        print(f"log records shown, filtered by level: {warn.text!r}")

        # Desired properties: invalid JSON refused, a valid change reaches the device's callback.
        Select(driver.find_element(By.ID, "twin-device")).select_by_visible_text("browser-approved")
        editor = driver.find_element(By.ID, "desired")
        until(driver, "the desired editor", lambda d: editor.is_enabled())
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(Keys.DELETE)
        editor.send_keys('{"interval": ')
        until(driver, "invalid JSON flagged", lambda d: "Not valid JSON" in d.find_element(By.ID, "desired-error").text)
        editor.send_keys('5, "mode": "eco"}')
        until(driver, "valid JSON accepted", lambda d: d.find_element(By.ID, "desired-error").text == "")
        driver.find_element(By.ID, "desired-save").click()
        m = device.wait_for(r"DESIRED (\d+) (\{.*\"interval\".*\})")
        got = json.loads(m.group(2))
        assert got == {"interval": 5, "mode": "eco"}, got
        print(f"the device's callback received version {m.group(1)}: {got}")
        until(
            driver,
            "the device's reported update",
            lambda d: f'"appliedDesiredVersion": {m.group(1)}' in d.find_element(By.ID, "reported").text,
        )
        print("the reported update appeared")

        # A cloud-to-device message: sent from the twin panel, delivered (stored by the device's inbox).
        payload = driver.find_element(By.ID, "c2d-payload")
        payload.send_keys("reboot at 03:00")
        driver.find_element(By.ID, "c2d-send").click()
        until(driver, "the message sent", lambda d: "Sent as message" in d.find_element(By.ID, "c2d-note").text)
        until(
            driver,
            "the message delivered",
            lambda d: d.find_elements(By.CSS_SELECTOR, "#c2d tbody tr[data-state='delivered']"),
        )
        print("cloud-to-device message delivered:", driver.find_element(By.CSS_SELECTOR, "#c2d tbody tr").text)

        # A software update: an artifact published and rolled out to the device through the admin
        # API; the rollout view shows the device's state until it succeeded.
        request = urllib.request.Request(
            f"{https}/admin/updates/artifacts?version=2.0.0",
            data=b"dashboard firmware 2.0.0",
            method="POST",
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca), timeout=WAIT) as r:
            artifact = json.load(r)
        hub = only_device(https, admin_token, ca)
        rollout = admin_post(f"{https}/admin/updates/rollouts", admin_token, ca, {"artifact": artifact["id"], "devices": [hub]})["id"]
        device.wait_for(r"INSTALLED 2\.0\.0")
        until(
            driver,
            "the rollout's device succeeded",
            lambda d: d.find_elements(By.CSS_SELECTOR, "#rollout tbody tr[data-state='succeeded']"),
        )
        assert rollout in driver.find_element(By.ID, "rollout-select").get_attribute("value"), rollout
        assert "Version 2.0.0" in driver.find_element(By.ID, "rollout-summary").text
        print("software update rolled out:", driver.find_element(By.CSS_SELECTOR, "#rollout tbody tr").text)
        section = driver.find_element(By.ID, "updates-section")
        driver.execute_script("arguments[0].scrollIntoView()", section)
        section.screenshot(str(OUT / "dashboard-rollout.png"))

        driver.save_screenshot(str(OUT / "dashboard-1280.png"))
        driver.set_window_size(390, 844)
        until(driver, "the narrow layout", lambda d: d.execute_script("return window.innerWidth") <= 400)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow} px at 390 px wide"
        driver.save_screenshot(str(OUT / "dashboard-390.png"))
        full_height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(390, min(int(full_height) + 100, 6000))
        driver.save_screenshot(str(OUT / "dashboard-390-full.png"))
        print("screenshots: target/browser/dashboard-1280.png, dashboard-390.png, dashboard-390-full.png, dashboard-rollout.png")
        print("browser test passed")
    finally:
        if driver is not None:
            driver.quit()
        if device is not None:
            device.stop()
        emulator.proc.terminate()
        try:
            emulator.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.proc.kill()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
