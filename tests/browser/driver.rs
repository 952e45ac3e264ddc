//! A thin layer over headless_chrome for the page's tests: find Debian's
//! Chromium (or skip loudly), launch it headless with a fresh profile, and
//! drive tabs the way a person would: typing, pressing keys, clicking.
//!
//! Waiting is event-driven: [`Page::wait_until`] installs a
//! `MutationObserver` in the page and resolves when a condition on the DOM
//! becomes true, with a deadline; nothing sleeps.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use headless_chrome::protocol::cdp::{Emulation, Page as Cdp, Runtime};
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

/// How long a condition in the page may take before the test fails.
pub const WAIT_MS: u64 = 20_000;

/// The flags Debian's Chromium needs here: headless, no sandbox (we run as
/// root in CI), no GPU, and none of its background traffic to Google, which
/// this closed network refuses.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// One Chromium at a time: several at once on a 2-core machine only make
/// each of them slow enough to time out.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Where Chromium is: `$CHROMIUM`, else the usual names on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Installed in every page before its own scripts run: collects uncaught
/// errors, so a test can check that none happened, even during loading.
const RECORD_ERRORS: &str = "window.__errors = [];
    window.addEventListener('error', e => window.__errors.push(String(e.message)));
    window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));";

/// A running headless Chromium with its own throwaway profile.
pub struct Chromium {
    /// `Option` so that `Drop` can end the browser before removing its
    /// profile (Chromium writes to it as it exits).
    browser: Option<Browser>,
    profile: PathBuf,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Chromium {
    /// Launches Chromium, or returns `None` (after a loud notice) when there
    /// is none and `CI` is unset. With `CI` set, a missing browser fails.
    /// `test` names the profile directory.
    pub fn launch(test: &str) -> Option<Chromium> {
        let Some(path) = find_chromium() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "CI is set but no Chromium was found: apt-get install -y chromium (or set CHROMIUM=/path)"
                );
            }
            // Written to the process's stderr directly: libtest captures
            // `eprintln!` of passing tests, and this must not go unseen.
            static NOTICE: std::sync::Once = std::sync::Once::new();
            NOTICE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: the browser tests need Chromium, and none was found. \
                     Install it with `apt-get install -y chromium` \
                     (or set CHROMIUM=/path/to/chromium). ***\n"
                );
            });
            return None;
        };
        let guard = ONE_BROWSER
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Under target/, not /tmp: should one of Chromium's child processes
        // write to the profile after it was removed, `cargo clean` takes it.
        let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("chromium-profiles")
            .join(format!("{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let options = LaunchOptions {
            path: Some(path),
            headless: true,
            sandbox: false,
            args: CHROMIUM_FLAGS.iter().map(OsStr::new).collect(),
            user_data_dir: Some(profile.clone()),
            window_size: Some((1000, 700)),
            idle_browser_timeout: Duration::from_secs(120),
            ..LaunchOptions::default()
        };
        let browser = Browser::new(options).expect("launching Chromium");
        Some(Chromium {
            browser: Some(browser),
            profile,
            _one_at_a_time: guard,
        })
    }

    /// Opens `url` in a new tab and waits for it to load.
    pub fn open(&self, url: &str) -> Page {
        self.open_with(url, "")
    }

    /// Opens `url` with `script` (and the error recorder) installed to run
    /// before any of the page's own.
    pub fn open_with(&self, url: &str, script: &str) -> Page {
        let browser = self.browser.as_ref().expect("a running browser");
        let tab = browser.new_tab().expect("new tab");
        tab.call_method(Cdp::AddScriptToEvaluateOnNewDocument {
            source: format!("{RECORD_ERRORS}\n{script}"),
            world_name: None,
            include_command_line_api: None,
            run_immediately: None,
        })
        .expect("Page.addScriptToEvaluateOnNewDocument");
        tab.navigate_to(url)
            .expect("navigate")
            .wait_until_navigated()
            .expect("page load");
        Page { tab }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        drop(self.browser.take()); // waits for Chromium to exit
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One tab.
pub struct Page {
    tab: Arc<Tab>,
}

impl Page {
    /// Evaluates `expression` in the page and returns its value (awaited if
    /// it is a promise). Evaluated as the page's own code would be: subject
    /// to its Content-Security-Policy (no `eval` unless the page allows it).
    pub fn eval(&self, expression: &str) -> Value {
        let result = self
            .tab
            .call_method(Runtime::Evaluate {
                expression: expression.to_owned(),
                object_group: None,
                include_command_line_api: None,
                silent: None,
                context_id: None,
                return_by_value: Some(true),
                generate_preview: None,
                user_gesture: Some(true),
                await_promise: Some(true),
                throw_on_side_effect: None,
                timeout: None,
                disable_breaks: None,
                repl_mode: None,
                allow_unsafe_eval_blocked_by_csp: Some(false),
                unique_context_id: None,
                serialization_options: None,
            })
            .expect("Runtime.evaluate");
        if let Some(exception) = result.exception_details {
            let detail = exception
                .exception
                .and_then(|e| e.description)
                .unwrap_or(exception.text);
            panic!("{detail}\n  while evaluating: {expression}");
        }
        result.result.value.unwrap_or(Value::Null)
    }

    /// Waits until the JavaScript condition `predicate` is true, re-checking
    /// it on every change to the DOM; fails after [`WAIT_MS`].
    pub fn wait_until(&self, predicate: &str) {
        let result = self
            .tab
            .evaluate(&Self::waiting_script(predicate), true)
            .unwrap_or_else(|e| {
                panic!("waiting for `{predicate}` failed: {e}\n{}", self.describe())
            });
        if result.value != Some(Value::Bool(true)) {
            panic!("timed out waiting for `{predicate}`\n{}", self.describe());
        }
    }

    /// As [`Page::wait_until`], across a navigation the page starts itself
    /// (a link, a form, `location.assign`): a wait in the old document ends
    /// with an error when the document goes, and is then started again in the
    /// new one. `predicate` must be false in the old document (check
    /// `location.pathname`), or this returns before the navigation.
    pub fn wait_until_navigated(&self, predicate: &str) {
        let deadline = std::time::Instant::now() + Duration::from_millis(WAIT_MS);
        let script = Self::waiting_script(predicate);
        loop {
            match self.tab.evaluate(&script, true) {
                Ok(result) if result.value == Some(Value::Bool(true)) => return,
                Ok(_) => panic!("timed out waiting for `{predicate}`\n{}", self.describe()),
                // The document was replaced while we waited: wait in the new one.
                Err(_) if std::time::Instant::now() < deadline => continue,
                Err(e) => panic!("waiting for `{predicate}` failed: {e}\n{}", self.describe()),
            }
        }
    }

    /// A promise that resolves to true once `predicate` holds, re-checked
    /// on every change to the DOM, and rejects after [`WAIT_MS`].
    fn waiting_script(predicate: &str) -> String {
        format!(
            "new Promise((resolve, reject) => {{
                const ok = () => {{ try {{ return !!({predicate}); }} catch (e) {{ return false; }} }};
                if (ok()) return resolve(true);
                const done = (f) => {{ observer.disconnect(); clearTimeout(timer); f(); }};
                const observer = new MutationObserver(() => {{ if (ok()) done(() => resolve(true)); }});
                observer.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});
                const timer = setTimeout(() => done(() => reject(new Error('timed out'))), {WAIT_MS});
            }})"
        )
    }

    /// The text of the element matching `selector` ("" if there is none).
    pub fn text(&self, selector: &str) -> String {
        let quoted = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(document.querySelector({quoted}) || {{}}).textContent || ''"
        ))
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    /// The chat rows, as `class|cell|cell` strings, for assertions and for
    /// failure messages.
    pub fn rows(&self) -> Vec<String> {
        let rows = self.eval(
            "Array.from(document.querySelectorAll('#message tr')).map(r =>
                [r.className].concat(Array.from(r.cells).map(c => c.className + ':' + c.textContent)).join('|'))",
        );
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until some row's text contains `text`; returns the row.
    pub fn wait_for_row(&self, text: &str) -> String {
        let quoted = serde_json::to_string(text).unwrap();
        self.wait_until(&format!(
            "Array.from(document.querySelectorAll('#message tr')).some(r => r.textContent.includes({quoted}))"
        ));
        self.rows().into_iter().find(|r| r.contains(text)).unwrap()
    }

    /// The status line's state (`connecting`, `open`, `closed`).
    pub fn wait_for_status(&self, state: &str) {
        self.wait_until(&format!(
            "document.getElementById('status').dataset.state === '{state}'"
        ));
    }

    /// Clicks the message box, then types `text` into it.
    pub fn type_text(&self, text: &str) {
        self.click("#chat");
        self.type_keys(text);
    }

    /// Enters `text` into whatever has focus, as a keyboard or an input
    /// method does (`Input.insertText`: the page sees `input` events). One
    /// protocol call for the whole text: headless_chrome takes ~100 ms per
    /// call, and key-by-key typing would make each line take seconds.
    /// Keys that act (Enter, Tab) are real key presses: see [`Page::press`].
    pub fn type_keys(&self, text: &str) {
        self.to_front();
        self.tab.send_character(text).expect("typing");
    }

    /// Presses a key (`Enter`, `Tab`, ...) on whatever has focus.
    pub fn press(&self, key: &str) {
        self.to_front();
        self.tab.press_key(key).expect("key press");
    }

    /// Clicks the element matching `selector`.
    pub fn click(&self, selector: &str) {
        self.to_front();
        self.tab
            .find_element(selector)
            .expect(selector)
            .click()
            .expect("click");
    }

    /// Moves the focus to the element matching `selector`, as Tab or a
    /// click would, and selects its text (so that typing replaces it). A
    /// click costs about a second of headless_chrome's waiting for the
    /// element to settle; this costs one call.
    pub fn focus(&self, selector: &str) {
        self.to_front();
        let quoted = serde_json::to_string(selector).unwrap();
        let focused = self.eval(&format!(
            "(() => {{ const el = document.querySelector({quoted});
                      el.focus(); if (el.select) el.select();
                      return document.activeElement === el; }})()"
        ));
        assert_eq!(focused, Value::Bool(true), "{selector} took no focus");
    }

    /// Brings the tab to the front, as a person switches to a tab before
    /// using it: a background tab does not render, so its elements never
    /// settle for a click.
    fn to_front(&self) {
        self.tab
            .bring_to_front()
            .expect("bringing the tab to the front");
    }

    /// The id of the focused element.
    pub fn focused(&self) -> String {
        self.eval("document.activeElement ? document.activeElement.id : ''")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Emulates a screen `width` × `height` CSS pixels (a phone, say).
    pub fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.tab
            .call_method(Emulation::SetDeviceMetricsOverride {
                width,
                height,
                device_scale_factor: 1.0,
                mobile,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .expect("Emulation.setDeviceMetricsOverride");
    }

    /// Uncaught errors in the page since it started loading.
    pub fn errors(&self) -> Value {
        self.eval("window.__errors")
    }

    /// A PNG of the visible page, base64-encoded (as the protocol gives it).
    pub fn screenshot_base64(&self) -> String {
        self.to_front();
        self.tab
            .call_method(Cdp::CaptureScreenshot {
                format: Some(Cdp::CaptureScreenshotFormatOption::Png),
                quality: None,
                clip: None,
                from_surface: Some(true),
                capture_beyond_viewport: None,
                optimize_for_speed: None,
            })
            .expect("Page.captureScreenshot")
            .data
    }

    /// A PNG of the visible page, saved to `path`.
    pub fn save_screenshot(&self, path: &Path) {
        self.to_front();
        let png = self
            .tab
            .capture_screenshot(Cdp::CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// What the page shows, for failure messages.
    fn describe(&self) -> String {
        // Plain `evaluate` (no panics): this runs while a test is failing.
        let text_of = |id: &str| {
            let script = format!("(document.getElementById('{id}') || {{}}).innerText || ''");
            self.tab
                .evaluate(&script, false)
                .ok()
                .and_then(|r| r.value)
                .unwrap_or(Value::Null)
        };
        let path = self
            .tab
            .evaluate("location.pathname", false)
            .ok()
            .and_then(|r| r.value)
            .unwrap_or(Value::Null);
        format!(
            "  at: {path}, room: {}, {}\n  status: {}\n  members: {}\n  rows: {}",
            text_of("room"),
            text_of("count"),
            text_of("status"),
            text_of("members"),
            text_of("message")
        )
    }

    /// Closes the tab (as closing a browser tab would: the socket closes).
    pub fn close(self) {
        self.tab.close(true).expect("closing the tab");
    }
}
