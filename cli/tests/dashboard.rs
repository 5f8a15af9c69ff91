//! The dashboard in a real headless Chromium (Debian's `chromium`, driven over WebDriver by
//! `chromedriver` and the `fantoccini` client): the task list loads, the 1,000-step task's page
//! draws every step in its SVG, and a failed task's retry form is refused without the token and
//! retries the task with it. Screenshots are kept in `target/dashboard/`.
//!
//! Without `/usr/bin/chromedriver` the test says so and passes, unless `TASKER_REQUIRE_BROWSER`
//! is set (the test command sets it, and installs the browser).

mod common;

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fill, serve, TOKEN};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tasker_core::{Engine, TaskId, TaskState};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process in a process group of its own; the whole group (the Chromium it
/// started with it) is killed when dropped, so a failed test leaves no browser behind.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(group) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: killpg only sends a signal; the group is the one spawn() made.
            unsafe { libc::killpg(group, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port, once it answers.
async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(format!("{}/status", driver.url)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return driver;
        }
        assert!(Instant::now() < until, "chromedriver did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A headless Chromium session with its own profile in `dir`.
async fn browser(driver: &Driver, dir: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                // Tests run as root in containers, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", dir.join("profile").display()),
            ],
        }),
    );
    // chromedriver is on loopback: plain HTTP.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Where screenshots are kept: `target/dashboard/`.
fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&dir).expect("target/dashboard");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(shots().join(name), png).expect("keep the screenshot");
}

/// The element `css` once the page that a click started shows it (a form's answer loads after
/// the click returns).
async fn appears(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!(
            "no {css} at {:?} ({e}): {}",
            c.current_url().await.map(|u| u.to_string()),
            c.source().await.unwrap_or_default()
        ),
    }
}

#[tokio::test]
async fn chromium_lists_tasks_draws_a_thousand_steps_and_retries_only_with_the_token() {
    if !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("TASKER_REQUIRE_BROWSER").is_none(),
            "TASKER_REQUIRE_BROWSER is set but {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: no {CHROMEDRIVER} (apt-get install chromium chromium-driver)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tasker-browser-{}", TaskId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("tasker.db").display());
    let (done, declined, big) = fill(&url).await;
    let web = serve(&url, &["--token", TOKEN]);
    let driver = driver().await;
    let c = browser(&driver, &dir).await;

    // The task list: one row per task, each with its state.
    c.goto(&format!("{}/", web.base)).await.unwrap();
    let rows = c.find_all(Locator::Css("tr.task")).await.unwrap();
    assert_eq!(rows.len(), 3);
    let mut seen = HashSet::new();
    for row in &rows {
        let id = row.attr("data-task").await.unwrap().expect("data-task");
        let status = row
            .find(Locator::Css(".status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let expected = if id == done.to_string() {
            "complete"
        } else if id == declined.to_string() {
            "error"
        } else {
            assert_eq!(id, big.to_string());
            "pending"
        };
        assert_eq!(status, expected, "task {id}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 3);
    screenshot(&c, "tasks.png").await;

    // A click opens the 1,000-step task; its SVG draws every step once.
    c.find(Locator::Css(&format!("a[href=\"/tasks/{big}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    appears(&c, "svg g.step").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with(&big.to_string()));
    let steps = c.find_all(Locator::Css("svg g.step")).await.unwrap();
    assert_eq!(steps.len(), 1000);
    let names: Vec<String> = c
        .execute(
            "return Array.from(document.querySelectorAll('svg g.step'), g => g.dataset.step)",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), 1000);
    assert!(unique.contains(&"start".to_owned()) && unique.contains(&"join".to_owned()));
    // Laid out in layers, left to right: start, then the legs, then join (the browser's own
    // geometry of what it drew).
    let left = |name: &str| {
        let c = c.clone();
        let script = format!(
            "return document.querySelector('svg g.step[data-step=\"{name}\"]').getBoundingClientRect().left"
        );
        async move { c.execute(&script, vec![]).await.unwrap().as_f64().unwrap() }
    };
    let (start, leg, join) = (
        left("start").await,
        left("leg_500").await,
        left("join").await,
    );
    assert!(start < leg && leg < join, "layers {start} {leg} {join}");
    assert_eq!(
        c.find_all(Locator::Css("tr.step")).await.unwrap().len(),
        1000
    );
    screenshot(&c, "thousand-steps.png").await;

    // The declined order: its retry form without the token is refused, and nothing changes.
    let engine = Engine::open(&url).await.unwrap();
    c.goto(&format!("{}/tasks/{declined}", web.base))
        .await
        .unwrap();
    let charge = c
        .find(Locator::Css("tr.step[data-step=\"charge\"]"))
        .await
        .unwrap();
    assert!(charge.text().await.unwrap().contains("card declined"));
    c.find(Locator::Css("button[value=\"retry\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let refusal = appears(&c, "p.error").await;
    assert!(refusal
        .text()
        .await
        .unwrap()
        .contains("a valid operator token is required"));
    assert_eq!(
        engine.task(declined).await.unwrap().status,
        TaskState::Error
    );
    screenshot(&c, "retry-refused.png").await;

    // With the token typed into the form, the retry goes through and the page shows it.
    c.goto(&format!("{}/tasks/{declined}", web.base))
        .await
        .unwrap();
    let form = c
        .find(Locator::Css(&format!(
            "form[action=\"/tasks/{declined}/retry\"]"
        )))
        .await
        .unwrap();
    form.find(Locator::Css("input.token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    form.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The answer is a redirect back to the same page, now showing the task in progress.
    appears(&c, "main > p .status.in_progress").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with(&format!("/tasks/{declined}")));
    assert_eq!(
        engine.task(declined).await.unwrap().status,
        TaskState::InProgress
    );
    screenshot(&c, "retried.png").await;

    c.close().await.unwrap();
    engine.close();
    let _ = std::fs::remove_dir_all(&dir);
}
