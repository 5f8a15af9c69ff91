//! What the dashboard's tests and its benchmark share: the templates (`web/order`, whose
//! `charge` fails for a declined order, and `web/wide`, 1,000 steps), a store filled with one
//! task of each outcome, and `tasker serve` run as its own process.
#![allow(dead_code)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use serde_json::json;
use tasker_core::logs::LogLevel;
use tasker_core::{ClaimedStep, Engine, HandlerError, NewTask, TaskId, Worker};

pub const TOKEN: &str = "s3cret-operator-token";

/// `web/order`: validate → charge (fails for a declined order) → ship.
const ORDER: &str = r#"
namespace: web
name: order
version: 1.0.0
steps:
  - name: validate
  - name: charge
    depends_on: [validate]
    retry: { max_attempts: 1 }
  - name: ship
    depends_on: [charge]
"#;

/// `web/wide`: one step fanning out to 998 steps, joined by one: 1,000 steps.
pub fn wide() -> String {
    let mut t =
        String::from("namespace: web\nname: wide\nversion: 1.0.0\nsteps:\n  - name: start\n");
    for i in 0..998 {
        t.push_str(&format!(
            "  - name: leg_{i}\n    handler: leg\n    depends_on: [start]\n"
        ));
    }
    let legs: Vec<String> = (0..998).map(|i| format!("leg_{i}")).collect();
    t.push_str(&format!(
        "  - name: join\n    depends_on: [{}]\n",
        legs.join(", ")
    ));
    t
}

/// The `tasker` binary this test built, on the store at `url`, with none of the caller's
/// `TASKER_URL` or `TASKER_TOKEN`.
pub fn tasker_command(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tasker"));
    command
        .args(["--url", url])
        .env_remove("TASKER_URL")
        .env_remove("TASKER_TOKEN");
    command
}

/// A dashboard process; killed when dropped.
pub struct Served {
    child: Child,
    pub base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tasker --url URL serve` on a free port, with `extra` arguments; its base URL is read from
/// the first line it prints.
pub fn serve(url: &str, extra: &[&str]) -> Served {
    let mut child = tasker_command(url)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tasker serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("tasker serve said {line:?}"))
        .to_owned();
    Served { child, base }
}

/// POST to `url` with the operator token as a Bearer header, as a script acts.
pub async fn act(http: &reqwest::Client, url: String) -> reqwest::Response {
    http.post(url).bearer_auth(TOKEN).send().await.unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A SQLite or PostgreSQL store at `url` with the templates and three tasks: an order that
/// completed, one declined (its `charge` failed, with a log line), and a 1,000-step `web/wide`
/// not yet started.
pub async fn fill(url: &str) -> (TaskId, TaskId, TaskId) {
    let engine = Engine::open(url).await.unwrap();
    engine.register_template_str(ORDER).await.unwrap();
    engine.register_template_str(&wide()).await.unwrap();
    let done = engine
        .create_task(NewTask::new("web", "order"))
        .await
        .unwrap();
    let declined = engine
        .create_task(NewTask::new("web", "order").context(json!({"decline": true})))
        .await
        .unwrap();
    let worker = Worker::builder(engine.clone())
        .handler("validate", |_s: ClaimedStep| async {
            Ok::<_, HandlerError>(json!({"valid": true}))
        })
        .handler("ship", |_s: ClaimedStep| async {
            Ok::<_, HandlerError>(json!("<b>shipped</b>"))
        })
        .handler("charge", |step: ClaimedStep| async move {
            if step.context["decline"] == json!(true) {
                step.log(LogLevel::Error, "the bank said <script>alert(1)</script>");
                return Err(HandlerError::permanent("card declined"));
            }
            Ok(json!({"paid": true}))
        })
        .build();
    worker
        .run_until_idle(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let big = engine
        .create_task(NewTask::new("web", "wide"))
        .await
        .unwrap();
    drop(worker);
    engine.close();
    (done, declined, big)
}
