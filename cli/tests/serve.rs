//! `tasker serve` run as its own process on a SQLite store an engine in the test filled, and
//! spoken to over HTTP: the task list and its filters, a task's page (its SVG DAG with every
//! step, its steps' errors, logs and transitions), the operator's acts with the token, without
//! it, without the page's CSRF value, from another origin and on a read-only dashboard, and
//! `/metrics`.

mod common;

use common::{act, client, fill, serve, tasker_command, TOKEN};
use serde_json::json;
use tasker_core::{Engine, TaskId, TaskState};

#[tokio::test]
async fn the_dashboard_shows_tasks_and_acts_only_with_the_token() {
    let dir = std::env::temp_dir().join(format!("tasker-serve-{}", TaskId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("tasker.db").display());
    let (done, declined, big) = fill(&url).await;
    let web = serve(&url, &["--token", TOKEN]);
    let http = client();
    let get = |path: String| {
        let http = http.clone();
        let base = web.base.clone();
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };

    // The list, and its filter.
    let (status, page) = get("/".into()).await;
    assert_eq!(status, 200);
    for id in [done, declined, big] {
        assert!(
            page.contains(&format!("data-task=\"{id}\"")),
            "{id} missing from the list"
        );
    }
    assert!(
        page.contains("<progress max=\"3\" value=\"3\">"),
        "the finished order's progress"
    );
    let (_, errors) = get("/?status=error".into()).await;
    assert!(errors.contains(&declined.to_string()) && !errors.contains(&done.to_string()));
    assert_eq!(get("/?status=nonsense".into()).await.0, 400);

    // A task's page: the DAG, the error, the log line and the result, escaped.
    let (status, page) = get(format!("/tasks/{declined}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<svg") && page.contains("data-step=\"charge\" data-status=\"error\""),
        "{page}"
    );
    assert!(page.contains("card declined"));
    assert!(
        page.contains("the bank said &lt;script&gt;alert(1)&lt;/script&gt;"),
        "the log line, escaped"
    );
    assert!(
        !page.contains("<script>alert(1)"),
        "nothing handler-written is markup"
    );
    let (_, page) = get(format!("/tasks/{done}")).await;
    assert!(
        page.contains("&quot;&lt;b&gt;shipped&lt;/b&gt;&quot;"),
        "the result, escaped"
    );
    assert!(page.contains("pending → in_progress"), "the transitions");
    assert!(
        page.contains("{\n  &quot;valid&quot;: true\n}"),
        "a result keeps its lines"
    );
    // A 1,000-step task: every step in the SVG.
    let (status, page) = get(format!("/tasks/{big}")).await;
    assert_eq!(status, 200);
    assert_eq!(page.matches("<g class=\"step\"").count(), 1000);
    assert_eq!(get(format!("/tasks/{}", TaskId::new())).await.0, 404);

    // Acts: refused without the token, with a wrong one, from another origin, or from a form
    // without the page's CSRF value; done with it.
    let retry = format!("{}/tasks/{declined}/retry", web.base);
    let r = http.post(&retry).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http.post(&retry).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(&retry)
        .bearer_auth(TOKEN)
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .post(&retry)
        .form(&[("token", TOKEN), ("csrf", "guessed")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let engine = Engine::open(&url).await.unwrap();
    assert_eq!(
        engine.task(declined).await.unwrap().status,
        TaskState::Error,
        "nothing was done"
    );
    // The page's form, as a browser sends it: the token typed, the page's CSRF value.
    let (_, page) = get(format!("/tasks/{declined}")).await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF value in the page: {page}"))
        .to_owned();
    let r = http
        .post(&retry)
        .form(&[("token", TOKEN), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], format!("/tasks/{declined}"));
    assert_eq!(
        engine.task(declined).await.unwrap().status,
        TaskState::InProgress
    );
    let r = act(&http, format!("{}/tasks/{declined}/pause", web.base)).await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(
        engine.task(declined).await.unwrap().status,
        TaskState::Paused
    );
    // An act the task's state refuses, and a resolve.
    let r = act(&http, format!("{}/tasks/{done}/pause", web.base)).await;
    assert_eq!(r.status().as_u16(), 409);
    act(&http, format!("{}/tasks/{declined}/resume", web.base)).await;
    let resolve = format!("{}/tasks/{declined}/steps/charge/resolve", web.base);
    // A body that is not a form is refused, not read as an empty one (a null result).
    let r = http
        .post(&resolve)
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .body(r#"{"result": "1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // Behind a proxy that rewrites Host, the Origin is the forwarded host's.
    let r = http
        .post(format!("{}/tasks/{declined}/pause", web.base))
        .bearer_auth(TOKEN)
        .header("Origin", "https://tasks.example")
        .header("X-Forwarded-Host", "tasks.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    act(&http, format!("{}/tasks/{declined}/resume", web.base)).await;
    let r = http
        .post(&resolve)
        .bearer_auth(TOKEN)
        .form(&[("result", "{bad")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .post(&resolve)
        .bearer_auth(TOKEN)
        .form(&[("result", "{\"paid\": true}")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let charge = engine
        .task(declined)
        .await
        .unwrap()
        .steps
        .into_iter()
        .find(|s| s.name == "charge")
        .unwrap();
    assert_eq!(charge.result, Some(json!({"paid": true})));

    // The metrics.
    let r = http
        .get(format!("{}/metrics", web.base))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(r.text().await.unwrap().contains("# TYPE"));

    // Only hosts it answers to: a name another site pointed at this machine is refused (DNS
    // rebinding); every answer forbids framing and caching.
    let r = http
        .get(format!("{}/", web.base))
        .header("Host", "evil.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 421);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("--allowed-host evil.example"));
    let r = http.get(format!("{}/", web.base)).send().await.unwrap();
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let named = serve(
        &url,
        &[
            "--token",
            "padded-token\n",
            "--allowed-host",
            "Tasks.Example",
        ],
    );
    let answered = [
        "tasks.example",
        "TASKS.EXAMPLE:8080",
        "tasks.example.",
        "localhost:1",
    ]
    .into_iter()
    .chain(["[::1]:2", "10.1.2.3"])
    .map(|h| (h, 200))
    .chain(["tasks.example.evil", "example", "tasks-example"].map(|h| (h, 421)));
    for (host, status) in answered {
        let r = http
            .get(format!("{}/", named.base))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{host}");
    }
    // The token's surrounding blanks are not part of it; the scheme's case does not matter.
    let r = http
        .post(format!("{}/tasks/{declined}/pause", named.base))
        .header("Authorization", "bearer padded-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    act(&http, format!("{}/tasks/{declined}/resume", web.base)).await;

    // Read-only: every act refused, no form shown.
    let ro = serve(&url, &["--read-only"]);
    let (_, page) = {
        let r = http
            .get(format!("{}/tasks/{declined}", ro.base))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    assert!(
        !page.contains("name=\"csrf\""),
        "no forms on a read-only dashboard"
    );
    let r = act(&http, format!("{}/tasks/{declined}/cancel", ro.base)).await;
    assert_eq!(r.status().as_u16(), 403);
    assert_ne!(
        engine.task(declined).await.unwrap().status,
        TaskState::Cancelled
    );

    // Under a base path (behind a proxy that mounts it at /ops/tasker): every route and link
    // is under it, nothing at the root.
    let mounted = serve(&url, &["--token", TOKEN, "--base-path", "/ops/tasker/"]);
    assert!(mounted.base.ends_with("/ops/tasker"), "{}", mounted.base);
    let root = mounted.base.trim_end_matches("/ops/tasker").to_owned();
    for path in ["", "/"] {
        let r = http
            .get(format!("{}{path}", mounted.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path:?}");
        let page = r.text().await.unwrap();
        assert!(page.contains(&format!("href=\"/ops/tasker/tasks/{declined}\"")));
        assert!(page.contains("action=\"/ops/tasker/\""));
        for outside in [
            "href=\"/tasks/",
            "href=\"/\"",
            "action=\"/\"",
            "action=\"/tasks",
        ] {
            assert!(!page.contains(outside), "{outside} escaped the base path");
        }
    }
    let page = http
        .get(format!("{}/tasks/{declined}", mounted.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("action=\"/ops/tasker/tasks/{declined}/retry\"")));
    for outside in ["href=\"/tasks/", "href=\"/\"", "action=\"/tasks"] {
        assert!(!page.contains(outside), "{outside} escaped the base path");
    }
    assert!(page.contains(&format!(
        "action=\"/ops/tasker/tasks/{declined}/steps/ship/resolve\""
    )));
    let r = http
        .get(format!("{root}/tasks/{declined}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "a page outside the base path");
    let r = act(&http, format!("{}/tasks/{declined}/pause", mounted.base)).await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(
        r.headers()["location"],
        format!("/ops/tasker/tasks/{declined}")
    );
    assert_eq!(
        engine.task(declined).await.unwrap().status,
        TaskState::Paused
    );
    let bad = tasker_command(&url)
        .args(["serve", "--bind", "127.0.0.1:0", "--base-path", "ops"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--base-path \"ops\""));
    engine.close();
}
