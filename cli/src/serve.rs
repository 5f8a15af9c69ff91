//! `tasker serve`: the dashboard, server-rendered HTML over axum (no front-end build step).
//!
//! Routes: `/` (the task list, with filters and progress), `/tasks/{id}` (a task's page: its
//! DAG as SVG, its steps with attempts, errors, logs, transitions and results),
//! `POST /tasks/{id}/{retry|cancel|pause|resume}` and `POST /tasks/{id}/steps/{name}/resolve`
//! (the operator's acts: they need the token, and pass a CSRF check), `/metrics`.
//!
//! An act is allowed with `Authorization: Bearer <token>` (a client that sets the header; a
//! browser never adds it by itself), or from the dashboard's own forms, which carry the token
//! the operator typed and the page's CSRF value. A request whose `Origin` is not the
//! dashboard's own is refused either way. `--read-only` refuses every act.
//!
//! Every request must name a host the dashboard answers to — an IP address, `localhost`, or
//! one given with `--allowed-host` — so that a page whose name an attacker points at this
//! machine (DNS rebinding) cannot read it; and every answer forbids framing and caching.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tasker_core::error::ErrorKind;
use tasker_core::view::TaskView;
use tasker_core::{Engine, TaskFilter, TaskId, TaskState};

use crate::dag::{self, xml_escape as esc};
use crate::{Failure, Outcome};

/// What every request shares.
pub struct Dashboard {
    engine: Engine,
    /// The operator's token (compared in constant time).
    token: String,
    /// The value the dashboard's forms carry (random per process).
    csrf: String,
    read_only: bool,
    /// The path the dashboard is served under (`""`, or such as `/tasker` behind a proxy).
    base: String,
    /// Host names it answers to besides IP addresses and `localhost` (`--allowed-host`).
    allowed_hosts: Vec<String>,
}

impl Dashboard {
    /// The dashboard of `engine`: acts need `token` (its surrounding blanks ignored); none
    /// are allowed when `read_only`; every route and link is under `base` (`""` for the root,
    /// else a path such as `/tasker`); requests may name an IP address, `localhost` or one of
    /// `allowed_hosts` as their host.
    pub fn new(
        engine: Engine,
        token: String,
        read_only: bool,
        base: &str,
        allowed_hosts: &[String],
    ) -> Result<Arc<Self>, Failure> {
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(Failure::Usage("the operator token is blank".into()));
        }
        Ok(Arc::new(Dashboard {
            engine,
            token,
            csrf: random_hex()?,
            read_only,
            base: base_path(base)?,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }))
    }

    /// Whether `host` (a request's `Host`) is one this dashboard answers to: an IP address (a
    /// name rebound to this machine arrives as that name, not as an address), `localhost`, or
    /// an allowed host (given with a port, only on that port).
    fn answers_to(&self, host: &str) -> bool {
        let (name, port) = host_parts(host);
        name.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
            || name == "localhost"
            || self.allowed_hosts.iter().any(|allowed| {
                let (a, p) = host_parts(allowed);
                a == name && (p.is_none() || p == port)
            })
    }
}

/// `host` (`name`, `name:port`, `[v6]:port`) as its lowercase name, without the trailing dot
/// of a fully qualified one, and its port.
fn host_parts(host: &str) -> (String, Option<String>) {
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            (name.to_owned(), Some(port.to_owned()))
        }
        _ => (host.clone(), None),
    };
    (name.strip_suffix('.').unwrap_or(&name).to_owned(), port)
}

/// Every request: refused unless its host is one the dashboard answers to; every answer
/// forbids framing by other sites, caching (pages carry the CSRF value) and type sniffing.
async fn guard(
    State(d): State<Arc<Dashboard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{FFFD}").to_owned());
    let mut response = match host.filter(|h| !d.answers_to(h)) {
        Some(host) => page_error(
            &d.base,
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "this dashboard does not answer to the host {host:?}: start it with \
                 --allowed-host {} (a name pointed at this machine by another site could \
                 otherwise read its pages)",
                host.split(':').next().unwrap_or_default()
            ),
        ),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// `base` as the dashboard keeps it: `""`, or `/` and segments with no trailing `/`.
fn base_path(base: &str) -> Result<String, Failure> {
    let trimmed = base.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let fine = trimmed.starts_with('/')
        && trimmed[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
                && seg != "."
                && seg != ".."
        });
    if fine {
        Ok(trimmed.to_owned())
    } else {
        Err(Failure::Usage(format!(
            "--base-path {base:?} is not a path such as /tasker (letters, digits, -._~ between slashes)"
        )))
    }
}

/// A random value, hex.
fn random_hex() -> Result<String, Failure> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| Failure::Store(format!("no random source: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Serves the dashboard of `engine` on `bind` until interrupted. Without a token one is made
/// and printed on stderr.
pub async fn run(
    engine: &Engine,
    bind: &str,
    token: Option<String>,
    read_only: bool,
    base: &str,
    allowed_hosts: &[String],
) -> Outcome {
    let addr: SocketAddr = bind.parse().map_err(|e| {
        Failure::Usage(format!(
            "--bind {bind:?} is not an address such as 127.0.0.1:8080: {e}"
        ))
    })?;
    let token = match token.filter(|t| !t.trim().is_empty()) {
        Some(t) => t,
        None => {
            let t = random_hex()?;
            if !read_only {
                eprintln!(
                    "tasker serve: operator token {t} (set --token or TASKER_TOKEN to choose one)"
                );
            }
            t
        }
    };
    let state = Dashboard::new(engine.clone(), token, read_only, base, allowed_hosts)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Store(e.to_string()))?;
    // The first line on stdout: where it listens (a test or a script reads it; a closed
    // stdout is no reason not to serve).
    {
        use std::io::Write as _;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on http://{local}{}", state.base);
        let _ = out.flush();
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Failure::Store(format!("the dashboard stopped: {e}")))
}

/// The dashboard's routes, under its base path.
pub fn router(state: Arc<Dashboard>) -> Router {
    let base = state.base.clone();
    let at = |path: &str| format!("{base}{path}");
    let mut routes = Router::new()
        .route(&at("/"), get(list))
        .route(&at("/tasks/{id}"), get(task_page))
        .route(&at("/tasks/{id}/{verb}"), post(act))
        .route(&at("/tasks/{id}/steps/{name}/resolve"), post(resolve))
        .route(&at("/metrics"), get(metrics));
    if !base.is_empty() {
        // `/tasker` as well as `/tasker/`.
        routes = routes.route(&base, get(list));
    }
    routes
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// An error page with its status.
fn page_error(base: &str, status: StatusCode, message: &str) -> Response {
    let body = layout(
        base,
        "Error",
        &format!(
            "<p class=\"error\">{}</p><p><a href=\"{base}/\">All tasks</a></p>",
            esc(message)
        ),
    );
    (status, Html(body)).into_response()
}

fn engine_error(base: &str, e: tasker_core::Error) -> Response {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Store => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::InvalidTransition => StatusCode::CONFLICT,
        ErrorKind::InvalidArgument | ErrorKind::Template => StatusCode::BAD_REQUEST,
    };
    page_error(base, status, &e.to_string())
}

/// A whole page around `body`.
fn layout(base: &str, title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · tasker</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style></head>\
<body><header><a href=\"{base}/\">tasker</a></header><main>{body}</main></body></html>",
        esc(title)
    )
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;color:#222}header{background:#263238;padding:8px 16px}\
header a{color:#fff;text-decoration:none;font-weight:bold}main{padding:16px}table{border-collapse:collapse}\
td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
.status{padding:1px 6px;border-radius:4px}.error{color:#b71c1c}form.inline{display:inline}\
.dag{border:1px solid #ddd;background:#fafafa}.scroll{overflow:auto;max-width:100%}\
pre{background:#f5f5f5;padding:6px;margin:0;white-space:pre-wrap;max-width:60em}details{margin:2px 0}";

fn badge(status: &str) -> String {
    format!(
        "<span class=\"status {status}\" style=\"background:{}\">{status}</span>",
        dag::colour(status)
    )
}

/// How many tasks the list shows unless `?limit=` says, and the most it shows: each is loaded
/// whole (its steps too), and any visitor may ask.
const LIST_DEFAULT: usize = 50;
const LIST_MOST: usize = 200;

/// The list's filters.
#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    status: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
}

async fn list(State(d): State<Arc<Dashboard>>, Query(q): Query<ListQuery>) -> Response {
    let status = match q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<TaskState>)
    {
        Some(Err(_)) => return page_error(&d.base, StatusCode::BAD_REQUEST, "unknown task state"),
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let filter = TaskFilter {
        status,
        namespace: nonempty(q.namespace.clone()),
        name: nonempty(q.name.clone()),
        limit: q.limit.unwrap_or(LIST_DEFAULT).clamp(1, LIST_MOST),
    };
    let tasks = match d.engine.list_tasks(&filter).await {
        Ok(t) => t,
        Err(e) => return engine_error(&d.base, e),
    };
    let mut body = format!("<h1>Tasks</h1><form method=\"get\" action=\"{}/\" class=\"filters\"><label>State <select name=\"status\"><option value=\"\">any</option>", d.base);
    for s in TaskState::ALL {
        let selected = if Some(*s) == status { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{}</option>", s.as_str());
    }
    let _ = write!(
        body,
        "</select></label> <label>Namespace <input name=\"namespace\" value=\"{}\"></label> \
<label>Name <input name=\"name\" value=\"{}\"></label> <button>Filter</button></form>",
        esc(filter.namespace.as_deref().unwrap_or("")),
        esc(filter.name.as_deref().unwrap_or(""))
    );
    body.push_str("<table id=\"tasks\"><tr><th>Task</th><th>Template</th><th>State</th><th>Progress</th><th>Created</th></tr>");
    for t in &tasks {
        let p = &t.progress;
        let done = crate::watch::finished(p);
        let _ = write!(
            body,
            "<tr class=\"task\" data-task=\"{id}\"><td><a href=\"{base}/tasks/{id}\">{id}</a></td><td>{}/{} {}</td><td>{}</td>\
<td><progress max=\"{total}\" value=\"{done}\"></progress> {done}/{total}</td><td>{}</td></tr>",
            esc(&t.namespace),
            esc(&t.name),
            esc(&t.version),
            badge(t.status.as_str()),
            crate::short_time(t.created_at),
            id = t.id,
            total = p.total,
            base = d.base,
        );
    }
    let _ = write!(body, "</table><p>{} task(s)</p>", tasks.len());
    Html(layout(&d.base, "Tasks", &body)).into_response()
}

async fn task_page(State(d): State<Arc<Dashboard>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<TaskId>() else {
        return page_error(&d.base, StatusCode::NOT_FOUND, "not a task id");
    };
    let engine = &d.engine;
    let task = match engine.task(id).await {
        Ok(task) => task,
        Err(e) => return engine_error(&d.base, e),
    };
    let graph = tasker_core::view::GraphView::from(&task);
    let (logs, transitions) = match tokio::try_join!(engine.logs(id, None), engine.transitions(id))
    {
        Ok(both) => both,
        Err(e) => return engine_error(&d.base, e),
    };
    // Each step's lines and transitions, grouped once.
    let mut logs_of: std::collections::HashMap<u32, Vec<&tasker_core::logs::LogView>> =
        std::collections::HashMap::new();
    for l in &logs {
        logs_of.entry(l.step_index).or_default().push(l);
    }
    let mut moves_of: std::collections::HashMap<u32, Vec<&tasker_core::TransitionView>> =
        std::collections::HashMap::new();
    for t in &transitions {
        if let Some(s) = t.step_id {
            moves_of.entry(s.index).or_default().push(t);
        }
    }
    let mut body = String::with_capacity(4096 + task.steps.len() * 1024);
    let _ = write!(
        body,
        "<h1>Task <code>{}</code></h1><p>{}/{} {} · {} · created {} · updated {}</p>",
        task.id,
        esc(&task.namespace),
        esc(&task.name),
        esc(&task.version),
        badge(task.status.as_str()),
        crate::short_time(task.created_at),
        crate::short_time(task.updated_at),
    );
    if let Some(p) = &task.parent {
        let _ = write!(
            body,
            "<p>Child of <a href=\"{base}/tasks/{0}\">{0}</a> (step {1})</p>",
            p.task_id,
            esc(&p.step),
            base = d.base
        );
    }
    body.push_str(&acts(&d, &task));
    let _ = write!(
        body,
        "<h2>DAG</h2><div class=\"scroll\">{}</div>",
        dag::svg(&graph)
    );
    body.push_str("<h2>Steps</h2><table id=\"steps\"><tr><th>Step</th><th>State</th><th>Attempts</th><th>Duration</th><th>Details</th></tr>");
    for step in &task.steps {
        let name = esc(&step.name);
        let _ = write!(
            body,
            "<tr class=\"step\" data-step=\"{name}\"><td>{name}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>",
            badge(step.status.as_str()),
            step.attempts,
            step.max_attempts,
            step.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
        );
        if let Some(e) = &step.error {
            let _ = write!(body, "<div class=\"error\">{}</div>", esc(e));
        }
        if let Some(r) = &step.result {
            let _ = write!(
                body,
                "<details><summary>result</summary><pre>{}</pre></details>",
                esc(&pretty(r))
            );
        }
        let lines = logs_of
            .get(&step.step_id.index)
            .map_or(&[][..], Vec::as_slice);
        details(
            &mut body,
            "logs",
            lines.iter().map(|l| {
                let (at, level) = (crate::short_time(l.at), l.level.as_str());
                format!("{at} #{} {level} {}", l.attempt, esc(&l.message))
            }),
        );
        let moves = moves_of
            .get(&step.step_id.index)
            .map_or(&[][..], Vec::as_slice);
        details(
            &mut body,
            "transitions",
            moves.iter().map(|t| transition_line(t, true)),
        );
        if !d.read_only
            && matches!(
                step.status.as_str(),
                "error" | "pending" | "waiting_for_retry"
            )
        {
            let _ = write!(
                body,
                "<details><summary>resolve</summary><form method=\"post\" action=\"{}/tasks/{}/steps/{}/resolve\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><label>Result (JSON) <input name=\"result\" value=\"null\"></label> \
<label>Token <input type=\"password\" name=\"token\" class=\"token\"></label> <button>Resolve</button></form></details>",
                d.base,
                task.id,
                url_part(&step.name),
                d.csrf
            );
        }
        body.push_str("</td></tr>");
    }
    body.push_str("</table>");
    let task_moves: Vec<_> = transitions.iter().filter(|t| t.step_id.is_none()).collect();
    body.push_str("<h2>Task transitions</h2><pre id=\"transitions\">");
    for t in task_moves {
        body.push_str(&transition_line(t, false));
        body.push('\n');
    }
    body.push_str("</pre>");
    Html(layout(&d.base, &format!("Task {}", task.id), &body)).into_response()
}

/// A `<details>` block of `lines` under `summary` (with their count); nothing when empty.
fn details(body: &mut String, summary: &str, lines: impl ExactSizeIterator<Item = String>) {
    if lines.len() == 0 {
        return;
    }
    let _ = write!(
        body,
        "<details><summary>{summary} ({})</summary><pre>",
        lines.len()
    );
    for line in lines {
        body.push_str(&line);
        body.push('\n');
    }
    body.push_str("</pre></details>");
}

/// One transition for a page: time, states, event (and the attempt, for a step's), reason.
fn transition_line(t: &tasker_core::TransitionView, attempt: bool) -> String {
    let attempt = if attempt {
        format!(", attempt {}", t.attempt)
    } else {
        String::new()
    };
    let reason = t
        .reason
        .as_deref()
        .map(|r| format!(": {}", esc(r)))
        .unwrap_or_default();
    format!(
        "{} {} → {} ({}{attempt}){reason}",
        crate::short_time(t.at),
        esc(t.from.as_deref().unwrap_or("")),
        esc(&t.to),
        esc(&t.event),
    )
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A path segment: every byte but letters, digits and `-._~` percent-encoded.
fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The operator's forms for `task` (none when read-only).
fn acts(d: &Dashboard, task: &TaskView) -> String {
    if d.read_only {
        return "<p class=\"read-only\">Read-only dashboard.</p>".to_owned();
    }
    let mut out = String::from("<div id=\"acts\">");
    for verb in ["retry", "pause", "resume", "cancel"] {
        let _ = write!(
            out,
            "<form class=\"inline\" method=\"post\" action=\"{}/tasks/{}/{verb}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<input type=\"password\" name=\"token\" class=\"token\" placeholder=\"token\"> <button name=\"verb\" value=\"{verb}\">{verb}</button></form> ",
            d.base, task.id, d.csrf
        );
    }
    out.push_str("</div>");
    out
}

/// The fields of an act's form.
#[derive(Debug, Deserialize, Default)]
pub struct ActForm {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    result: Option<String>,
}

/// Whether this request may act: `None` if so, else the refusal.
fn refused(d: &Dashboard, headers: &HeaderMap, form: &ActForm) -> Option<Response> {
    if d.read_only {
        return Some(page_error(
            &d.base,
            StatusCode::FORBIDDEN,
            "this dashboard is read-only",
        ));
    }
    // A request from another site's page is refused whatever it carries.
    // Our own origin is the host the browser asked for: `Host`, or behind a proxy that
    // rewrites it, `X-Forwarded-Host`. An `Origin` that is not text is not ours.
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .collect();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = hosts
            .iter()
            .any(|h| origin == format!("http://{h}") || origin == format!("https://{h}"));
        if !own {
            return Some(page_error(
                &d.base,
                StatusCode::FORBIDDEN,
                "cross-site request refused",
            ));
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(value)
        });
    match (bearer, form.token.as_deref().filter(|t| !t.is_empty())) {
        (Some(t), _) if same(t.trim(), &d.token) => None,
        (None, Some(t)) if same(t.trim(), &d.token) => {
            if form.csrf.as_deref().is_some_and(|c| same(c, &d.csrf)) {
                None
            } else {
                Some(page_error(
                    &d.base,
                    StatusCode::FORBIDDEN,
                    "the form's CSRF value is missing or stale: reload the page",
                ))
            }
        }
        _ => Some(page_error(
            &d.base,
            StatusCode::UNAUTHORIZED,
            "a valid operator token is required",
        )),
    }
}

/// The task an act names, if this request may act on it (else the refusal); its form.
fn allowed(
    d: &Dashboard,
    id: &str,
    headers: &HeaderMap,
    form: Result<Form<ActForm>, axum::extract::rejection::FormRejection>,
) -> Result<(TaskId, ActForm), Box<Response>> {
    // A client with a Bearer header may send no body at all; a body that is not a form is
    // refused, not read as an empty one.
    let form = match form {
        Ok(Form(f)) => f,
        Err(_) if headers.get(header::CONTENT_TYPE).is_none() => ActForm::default(),
        Err(e) => {
            let why = format!("the body is not a form (application/x-www-form-urlencoded): {e}");
            return Err(Box::new(page_error(
                &d.base,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &why,
            )));
        }
    };
    if let Some(no) = refused(d, headers, &form) {
        return Err(Box::new(no));
    }
    match id.parse::<TaskId>() {
        Ok(id) => Ok((id, form)),
        Err(_) => Err(Box::new(page_error(
            &d.base,
            StatusCode::NOT_FOUND,
            "not a task id",
        ))),
    }
}

/// Back to the task's page once done.
fn acted(d: &Dashboard, id: TaskId, done: tasker_core::error::Result<()>) -> Response {
    match done {
        Ok(()) => Redirect::to(&format!("{}/tasks/{id}", d.base)).into_response(),
        Err(e) => engine_error(&d.base, e),
    }
}

async fn act(
    State(d): State<Arc<Dashboard>>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (id, _) = match allowed(&d, &id, &headers, form) {
        Ok(ok) => ok,
        Err(no) => return *no,
    };
    match crate::Act::named(&verb) {
        Some(act) => acted(&d, id, act.on(&d.engine, id).await),
        None => page_error(&d.base, StatusCode::NOT_FOUND, "no such act"),
    }
}

async fn resolve(
    State(d): State<Arc<Dashboard>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (id, form) = match allowed(&d, &id, &headers, form) {
        Ok(ok) => ok,
        Err(no) => return *no,
    };
    let text = form.result.as_deref().unwrap_or("null");
    match serde_json::from_str(text) {
        Ok(value) => acted(&d, id, d.engine.resolve_step(id, &name, value).await),
        Err(e) => page_error(
            &d.base,
            StatusCode::BAD_REQUEST,
            &format!("the result is not JSON: {e}"),
        ),
    }
}

async fn metrics(State(d): State<Arc<Dashboard>>) -> Response {
    match d.engine.metrics().await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => engine_error(&d.base, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("", "a"));
    }

    #[test]
    fn base_paths_are_kept_plain() {
        assert_eq!(base_path("").unwrap(), "");
        assert_eq!(base_path("/").unwrap(), "");
        assert_eq!(base_path("/tasker/").unwrap(), "/tasker");
        assert_eq!(base_path("/ops/tasker").unwrap(), "/ops/tasker");
        for bad in ["tasker", "/a//b", "/a b", "/../x", "/a/\"", "/{id}"] {
            assert!(
                matches!(base_path(bad), Err(Failure::Usage(_))),
                "{bad:?} was taken"
            );
        }
    }

    #[test]
    fn step_names_are_encoded_in_paths() {
        assert_eq!(url_part("worker[2] a/b"), "worker%5B2%5D%20a%2Fb");
    }
}
