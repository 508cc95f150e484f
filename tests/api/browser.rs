//! A real headless browser for the console tests: Debian's `chromium`, driven over the
//! DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in NUL on
//! file descriptors 3 and 4), in a fresh profile folder; no crate besides serde_json.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    commands: File,
    replies: Receiver<Value>,
    next_id: u64,
    session: String,
    profile: tempfile::TempDir,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    (fds[0], fds[1])
}

/// The browser binary; the test fails naming the package when it is missing.
fn chromium() -> &'static str {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("the console tests need a headless browser: install Debian's package chromium (apt-get install chromium)")
}

impl Browser {
    /// Starts chromium headless, with one page attached.
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (to_child, commands) = pipe();
        let (replies, from_child) = pipe();
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(profile.path().join("chromium.log")).unwrap());
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(to_child, 3) < 0 || libc::dup2(from_child, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // The parent keeps only its own ends.
        unsafe {
            libc::close(to_child);
            libc::close(from_child);
        }
        let commands = unsafe { File::from_raw_fd(commands) };
        let reader = BufReader::new(unsafe { File::from_raw_fd(replies) });
        let (sender, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for message in reader.split(0) {
                let Ok(message) = message else { return };
                let Ok(value) = serde_json::from_slice::<Value>(&message) else { continue };
                if sender.send(value).is_err() {
                    return;
                }
            }
        });
        let mut browser = Browser { child, commands, replies, next_id: 0, session: String::new(), profile };
        let target = browser.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.page("Page.enable", json!({}));
        browser.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        if let Err(err) = self.commands.write_all(&bytes) {
            panic!("chromium is gone ({err}): {}", self.log());
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(reply) = self.replies.recv_timeout(left) else {
                panic!("chromium did not answer {method}: {}", self.log())
            };
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// What chromium wrote to its standard error (its last lines).
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        log[log.len().saturating_sub(4000)..].to_owned()
    }

    /// A command to the page.
    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Evaluates `expression` in the page; its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.page("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Opens `url` and waits for the page that loads in the end (after redirects).
    pub fn open(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url}));
        self.settle();
    }

    /// Waits until a page has loaded and stays loaded (a form's submission has been answered).
    pub fn settle(&mut self) {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut quiet = 0;
        while quiet < 3 {
            assert!(Instant::now() < deadline, "the page did not load");
            std::thread::sleep(Duration::from_millis(100));
            let state = self.eval("document.readyState + ' ' + location.href");
            quiet = if state.as_str().is_some_and(|s| s.starts_with("complete ")) { quiet + 1 } else { 0 };
        }
    }

    /// Clicks the element `selector` finds (a real click, as a user's, through the page).
    pub fn click(&mut self, selector: &str) {
        let found = self.eval(&format!("(() => {{ const e = document.querySelector({selector:?}); if (!e) return false; e.click(); return true; }})()"));
        assert_eq!(found, json!(true), "no {selector} on {}", self.eval("location.href"));
        std::thread::sleep(Duration::from_millis(200));
        self.settle();
    }

    /// Types `text` into the field `selector` finds.
    pub fn fill(&mut self, selector: &str, text: &str) {
        self.eval(&format!("document.querySelector({selector:?}).focus()"));
        self.page("Input.insertText", json!({"text": text}));
    }

    /// The page's path.
    pub fn path(&mut self) -> String {
        self.eval("location.pathname").as_str().unwrap().to_owned()
    }

    /// The page's HTML as the browser has it.
    pub fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().unwrap().to_owned()
    }

    /// The page's cookies (the browser's cookie jar, HttpOnly ones included).
    pub fn cookies(&mut self) -> Value {
        self.page("Network.getCookies", json!({}))["cookies"].clone()
    }

    /// A PNG of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.page("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true}));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
