//! Templates of the Rails Tasker engine and of tasker-core register unchanged: the format is
//! detected, mapped (handler, config, dependencies, retries, timeouts, schema), overridden per
//! environment, and what means nothing here comes back as warnings. Real templates from
//! `../shared/compat/` when it is there, and templates of both formats written here.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tasker_core::{Backoff, Engine, Error, Format, NewTask, TaskState};

use support::*;

async fn engine(environment: Option<&str>) -> Engine {
    let mut builder = Engine::builder().url("memory:");
    if let Some(env) = environment {
        builder = builder.environment(env);
    }
    builder.build().await.unwrap()
}

/// The compat samples, when `../shared` is beside the repository.
fn compat(file: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/compat")
        .join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(_) => {
            eprintln!("skipped: {} is not there", path.display());
            None
        }
    }
}

/// Runs every step of `task` with a handler per step answering with its own config, and
/// returns the task's steps' results by name.
async fn run_all(engine: &Engine, task: tasker_core::TaskId, handlers: &[&str]) -> Value {
    let mut builder = tasker_core::Worker::builder(engine.clone());
    for &name in handlers {
        builder = builder.handler(name, |step: tasker_core::ClaimedStep| async move {
            Ok::<_, tasker_core::HandlerError>(json!({ "config": *step.config }))
        });
    }
    let report = builder
        .build()
        .run_until_idle(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(report.idle);
    let view = task_view(engine, task).await;
    assert_eq!(view.status, TaskState::Complete, "{view:?}");
    Value::Object(
        view.steps
            .iter()
            .map(|s| (s.name.to_string(), s.result.clone().unwrap_or(Value::Null)))
            .collect(),
    )
}

#[tokio::test]
async fn the_rails_order_workflow_runs_and_its_schema_refuses_a_bad_context() {
    let Some(text) = compat("rails_linear_order_processing.yaml") else {
        return;
    };
    let engine = engine(None).await;
    let reg = engine.register_document_str(&text).await.unwrap();
    assert_eq!(reg.format, Format::Rails);
    let g = &reg.graph;
    assert_eq!((g.namespace(), g.name()), ("ecommerce", "process_order"));
    let pay = g.step(g.index_of("process_payment").unwrap());
    assert_eq!(
        &*pay.handler,
        "BlogExamples::Post01::StepHandlers::ProcessPaymentHandler"
    );
    assert_eq!(*pay.config, json!({"timeout_seconds": 30}));
    assert_eq!(pay.retry.max_attempts, 3);
    let confirm = g.step(g.index_of("send_confirmation").unwrap());
    assert_eq!(confirm.retry.max_attempts, 5);
    assert_eq!(g.parents(g.index_of("process_payment").unwrap()).len(), 1);
    for key in ["task_handler_class", "default_dependent_system"] {
        assert!(
            reg.warnings.iter().any(|w| w.contains(key)),
            "{key} warned: {:?}",
            reg.warnings
        );
    }

    let bad = engine
        .create_task(NewTask::new("ecommerce", "process_order").context(json!({
            "cart_items": [{"product_id": "one", "quantity": 0, "price": 5}],
            "payment_info": {"method": "cash", "amount": 5, "currency": "USD"},
        })))
        .await
        .unwrap_err();
    let Error::InvalidContext { failures, .. } = &bad else {
        panic!("{bad}")
    };
    let paths: Vec<&str> = failures.iter().map(|(p, _)| p.as_str()).collect();
    for path in [
        "",
        "/cart_items/0/product_id",
        "/cart_items/0/quantity",
        "/payment_info/method",
    ] {
        assert!(paths.contains(&path), "{path} in {paths:?}");
    }
    assert!(bad.to_string().contains("customer_info"), "{bad}");
    assert_eq!(bad.kind(), tasker_core::error::ErrorKind::InvalidArgument);

    let good = json!({
        "cart_items": [{"product_id": 1, "quantity": 2, "price": 5.5}],
        "payment_info": {"method": "paypal", "amount": 11, "currency": "EUR"},
        "customer_info": {"email": "a@example.com", "name": "Ann"},
    });
    let task = create(
        &engine,
        NewTask::new("ecommerce", "process_order").context(good),
    )
    .await;
    let handlers: Vec<&str> = g.steps().iter().map(|s| &*s.handler).collect();
    let results = run_all(&engine, task, &handlers).await;
    assert_eq!(
        results["update_inventory"],
        json!({"config": {"timeout_seconds": 20}})
    );
}

#[tokio::test]
async fn rails_environment_overrides_merge_into_the_base_config() {
    let Some(text) = compat("rails_env_overrides_integration_yaml_example.yaml") else {
        return;
    };
    let config_of = |reg: &tasker_core::Registered, step: &str| {
        let g = &reg.graph;
        (*g.step(g.index_of(step).unwrap()).config).clone()
    };
    let base = engine(None)
        .await
        .register_document_str(&text)
        .await
        .unwrap();
    assert_eq!(
        config_of(&base, "fetch_cart"),
        json!({"type": "api", "url": "https://api.ecommerce.com/cart", "params": {"cart_id": 1}})
    );
    let dev = engine(Some("development"))
        .await
        .register_document_str(&text)
        .await
        .unwrap();
    assert_eq!(
        config_of(&dev, "fetch_cart"),
        json!({"type": "api", "url": "http://localhost:3000/api/cart", "params": {"cart_id": 1, "debug": true}}),
        "merged key by key: type kept"
    );
    let test = engine(Some("test"))
        .await
        .register_document_str(&text)
        .await
        .unwrap();
    assert_eq!(
        config_of(&test, "fetch_products")["params"],
        json!({"test_mode": true})
    );
    // depends_on_steps: both parents.
    let g = &base.graph;
    assert_eq!(g.parents(g.index_of("validate_products").unwrap()).len(), 2);
    assert!(base.warnings.iter().any(|w| w.contains("named_steps")));

    let engine = engine(Some("test")).await;
    engine.register_document_str(&text).await.unwrap();
    let task = create(
        &engine,
        NewTask::new("api_tests", "api_task/integration_yaml_example")
            .context(json!({"cart_id": 7})),
    )
    .await;
    let handlers: Vec<&str> = g.steps().iter().map(|s| &*s.handler).collect();
    let results = run_all(&engine, task, &handlers).await;
    assert_eq!(
        results["fetch_cart"]["config"]["url"],
        json!("http://test-api.ecommerce.com/cart")
    );
}

#[tokio::test]
async fn tasker_core_templates_map_handlers_retries_and_timeouts() {
    for file in [
        "core_diamond_workflow.yaml",
        "core_tree_workflow_legacy_retry_limit.yaml",
    ] {
        let Some(text) = compat(file) else { return };
        for env in [None, Some("test")] {
            let engine = engine(env).await;
            let reg = engine.register_document_str(&text).await.unwrap();
            assert_eq!(reg.format, Format::TaskerCore, "{file}");
            let g = reg.graph.clone();
            let first = g.step(0);
            assert!(first.handler.contains("::"), "{file}: {}", first.handler);
            assert_eq!(first.retry.backoff, Backoff::Exponential);
            assert_eq!(first.retry.backoff_max_ms, 30_000, "{file}: max_backoff_ms");
            match env {
                None => assert_eq!(first.timeout_ms, 30_000, "{file}"),
                // The tree's test overrides are null: the base stays.
                Some(_) if file.contains("tree") => {
                    assert_eq!(first.timeout_ms, 30_000, "{file}: null leaves the base");
                    assert_eq!(first.config["debug_mode"], json!(true), "{file}");
                    assert_eq!(first.config["action"], json!("initialize_tree"), "{file}");
                }
                Some(_) => {
                    assert_eq!(first.timeout_ms, 10_000, "{file}");
                    assert_eq!(first.retry.max_attempts, 2, "{file}");
                }
            }
            if file.contains("tree") {
                assert_eq!(
                    first.retry.max_attempts, 3,
                    "{file}: the legacy retry.limit"
                );
                assert!(
                    reg.warnings.iter().any(|w| w.contains("loaded_from")),
                    "{:?}",
                    reg.warnings
                );
            }
            let context = if file.contains("diamond") {
                json!({"even_number": 6})
            } else {
                json!({"workflow_type": "tree"})
            };
            let task = create(
                &engine,
                NewTask::new(g.namespace(), g.name()).context(context),
            )
            .await;
            let handlers: Vec<&str> = g.steps().iter().map(|s| &*s.handler).collect();
            let results = run_all(&engine, task, &handlers).await;
            if file.contains("diamond") {
                assert_eq!(results["diamond_branch_b"]["config"]["constant"], json!(25));
            }
        }
    }
}

/// Our own Rails Tasker template: every mapped key, and the edge cases of each.
const RAILS: &str = r#"
name: refund
namespace_name: payments
version: 2.1.0
task_handler_class: RefundHandler
schema:
  type: object
  required: [amount]
  properties:
    amount: {type: number, exclusiveMinimum: 0}
step_templates:
  - name: look_up
    handler_class: Payments::LookUp
    default_retryable: false
    default_retry_limit: 9
  - name: refund
    handler_class: Payments::Refund
    depends_on_step: look_up
    depends_on_steps: [look_up]
    default_retry_limit: 4
    handler_config: {gateway: stripe}
    dependent_system: stripe
  - name: notify
    handler_class: Payments::Notify
    depends_on_steps: [refund, look_up]
environments:
  production:
    step_templates:
      - name: refund
        handler_config: {gateway: adyen}
"#;

#[tokio::test]
async fn a_rails_template_of_our_own_maps_every_key() {
    let reg = engine(Some("production"))
        .await
        .register_document_str(RAILS)
        .await
        .unwrap();
    let g = &reg.graph;
    let step = |name: &str| g.step(g.index_of(name).unwrap());
    assert_eq!(
        step("look_up").retry.max_attempts,
        1,
        "default_retryable: false"
    );
    assert_eq!(step("refund").retry.max_attempts, 4);
    assert_eq!(step("notify").retry.max_attempts, 3, "the Rails default");
    assert_eq!(
        g.parents(g.index_of("refund").unwrap()).len(),
        1,
        "de-duplicated"
    );
    assert_eq!(g.parents(g.index_of("notify").unwrap()).len(), 2);
    assert_eq!(*step("refund").config, json!({"gateway": "adyen"}));
    assert_eq!(*step("look_up").config, json!({}));
    assert!(
        reg.warnings
            .iter()
            .any(|w| w.contains("step \"refund\"") && w.contains("dependent_system")),
        "{:?}",
        reg.warnings
    );
    // No namespace_name: Rails Tasker's default.
    let nameless = RAILS.replace("namespace_name: payments\n", "");
    let reg = engine(None)
        .await
        .register_document_str(&nameless)
        .await
        .unwrap();
    assert_eq!(reg.graph.namespace(), "default");
    assert_eq!(*reg.graph.step(1).config, json!({"gateway": "stripe"}));
}

#[tokio::test]
async fn a_tasker_core_template_of_our_own_maps_every_key() {
    let text = r#"
name: sync
namespace_name: crm
version: 1.0.0
domain_events: [{name: synced}]
input_schema: {type: object, required: [account]}
steps:
  - name: pull
    handler: {callable: Crm::Pull, initialization: {page: 50}}
    retry: {retryable: true, limit: 0, backoff: linear, backoff_base_ms: 10, max_backoff_ms: 99}
    timeout_seconds: 1.5
  - name: push
    handler: {callable: Crm::Push}
    dependencies: [pull]
    retry: {retryable: false, max_attempts: 8, backoff: fibonacci}
    publishes_events:
      - {name: pushed, condition: success, delivery_mode: durable, schema: {type: object}}
  - name: audit
    handler: {callable: Crm::Audit}
    dependencies: [push]
environments:
  staging:
    steps:
      - name: ALL
        timeout_seconds: 5
      - name: push
        handler: {initialization: {dry_run: true}}
"#;
    let reg = engine(None)
        .await
        .register_document_str(text)
        .await
        .unwrap();
    let g = &reg.graph;
    let pull = g.step(0);
    assert_eq!(
        (&*pull.handler, pull.retry.max_attempts),
        ("Crm::Pull", 1),
        "limit 0: one attempt"
    );
    assert_eq!(
        (
            pull.retry.backoff,
            pull.retry.backoff_base_ms,
            pull.retry.backoff_max_ms
        ),
        (Backoff::Linear, 10, 99)
    );
    assert_eq!(pull.timeout_ms, 1_500);
    assert_eq!(*pull.config, json!({"page": 50}));
    assert_eq!(g.step(1).retry.max_attempts, 1, "retryable: false");
    assert_eq!(
        g.step(0).events.names(),
        ["synced"],
        "domain_events: every step's"
    );
    assert_eq!(
        g.step(1).events.names(),
        ["pushed", "synced"],
        "publishes_events"
    );
    for expected in ["condition", "delivery_mode"] {
        assert!(
            reg.warnings
                .iter()
                .any(|w| w.contains("publishes_events") && w.contains(expected)),
            "{expected}: {:?}",
            reg.warnings
        );
    }

    let staged = engine(Some("staging"))
        .await
        .register_document_str(text)
        .await
        .unwrap();
    assert!(
        staged.graph.steps().iter().all(|s| s.timeout_ms == 5_000),
        "ALL"
    );
    assert_eq!(*staged.graph.step(1).config, json!({"dry_run": true}));
    assert_eq!(*staged.graph.step(0).config, json!({"page": 50}));

    let engine = engine(None).await;
    engine.register_document_str(text).await.unwrap();
    let err = engine
        .create_task(NewTask::new("crm", "sync").context(json!({"acct": 1})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidContext { .. }), "{err}");
    assert!(err.to_string().contains("account"), "{err}");
}

#[tokio::test]
async fn mistakes_in_foreign_templates_and_overrides_are_named() {
    let engine = engine(Some("qa")).await;
    let cases = [
        ("name: x\nnamespace_name: n\nversion: 1.0.0\nstep_templates: 3\n", "step_templates must be a list"),
        ("name: x\nversion: 1.0.0\nnamespace_name: n\nsteps:\n  - name: a\n    handler: Foo\n", "handler must be a map with callable"),
        ("name: x\nversion: 1.0.0\nnamespace_name: n\nsteps:\n  - name: a\nenvironments:\n  qa:\n    steps:\n      - name: b\n", "overrides step \"b\""),
        ("name: x\nversion: 1.0.0\nnamespace_name: n\nsteps:\n  - name: a\n    timeout_seconds: soon\n", "timeout_seconds must be a number"),
        ("namespace: n\nname: x\nversion: 1.0.0\ninput_schema: {type: 12}\nsteps: [{name: a}]\n", "not a valid JSON Schema"),
        ("namespace: n\nname: x\nversion: 1.0.0\nsteps: [{name: a, handler_class: A}]\n", "unknown field `handler_class`"),
    ];
    for (text, expected) in cases {
        let err = engine.register_document_str(text).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{text}\n=> {err}");
    }
}

#[tokio::test]
async fn the_native_format_takes_config_schema_and_environments_and_stays_strict() {
    let text = "namespace: n\nname: cfg\nversion: 1.0.0\ninput_schema: {type: object, properties: {n: {type: integer}}}\nsteps:\n  - {name: a, config: {k: 1}, retry: {backoff: none}}\nenvironments:\n  dev:\n    steps:\n      - {name: a, config: {k: 2}}\n";
    let dev = engine(Some("dev")).await;
    let reg = dev.register_document_str(text).await.unwrap();
    assert_eq!((reg.format, reg.warnings.len()), (Format::Native, 0));
    assert_eq!(*reg.graph.step(0).config, json!({"k": 2}));
    assert_eq!(reg.graph.step(0).retry.backoff, Backoff::None);
    let err = dev
        .create_task(NewTask::new("n", "cfg").context(json!({"n": "one"})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/n"), "{err}");
    let task = create(&dev, NewTask::new("n", "cfg").context(json!({"n": 1}))).await;
    let step = claim_one(&dev, "a").await;
    assert_eq!((step.task_id(), &*step.config), (task, &json!({"k": 2})));
    assert_eq!(step.to_json()["config"], json!({"k": 2}));
}

#[tokio::test]
async fn nulls_inside_an_override_leave_the_base_and_a_rails_limit_of_zero_is_one_attempt() {
    let text = "namespace: n\nname: nulls\nversion: 1.0.0\nsteps:\n  - {name: a}\nenvironments:\n  dev:\n    steps:\n      - {name: a, retry: {max_attempts: null, backoff: linear}, config: {k: null, deep: {x: null, y: 1}}}\n";
    let reg = engine(Some("dev"))
        .await
        .register_document_str(text)
        .await
        .unwrap();
    let a = reg.graph.step(0);
    assert_eq!(
        (a.retry.max_attempts, a.retry.backoff),
        (3, Backoff::Linear)
    );
    assert_eq!(*a.config, json!({"deep": {"y": 1}}));
    let rails = "name: r\nnamespace_name: n\nversion: 1.0.0\nstep_templates:\n  - {name: once, handler_class: Once, default_retry_limit: 0}\n";
    let reg = engine(None)
        .await
        .register_document_str(rails)
        .await
        .unwrap();
    assert_eq!(reg.graph.step(0).retry.max_attempts, 1);
}

/// Declared custom events, in all three formats: a handler publishes one (subscribers see it
/// under its own name with the step, the attempt and the payload); an undeclared one, or a
/// payload that breaks the event's schema, is refused naming why, and nothing is published.
#[tokio::test]
async fn handlers_publish_the_custom_events_their_templates_declare() {
    let native = r#"
namespace: ev
name: native
version: 1.0.0
events: [order.placed]
steps:
  - name: pay
    events:
      - {name: payment.taken, schema: {type: object, required: [amount]}}
  - name: ship
    depends_on: [pay]
"#;
    let rails = r#"
name: rails
namespace_name: ev
version: 1.0.0
task_handler_class: Ev::Rails
step_templates:
  - name: pay
    handler_class: Ev::Pay
    custom_events:
      - {name: payment.taken, description: the money came in}
"#;
    let engine = engine(None).await;
    engine.register_document_str(native).await.unwrap();
    let reg = engine.register_document_str(rails).await.unwrap();
    assert_eq!(reg.graph.step(0).events.names(), ["payment.taken"]);
    let sub = engine.subscribe("payment.*").unwrap();
    let all = engine.subscribe("*").unwrap();
    let task = engine
        .create_task(NewTask::new("ev", "native"))
        .await
        .unwrap();
    let claimed = engine
        .claim(&tasker_core::store::ClaimRequest {
            worker_id: "w".into(),
            handlers: None,
            limit: 1,
        })
        .await
        .unwrap();
    let pay = &claimed[0];
    engine
        .publish_event(pay, "payment.taken", json!({"amount": 12}))
        .unwrap();
    engine
        .publish_event(pay, "order.placed", json!(null))
        .unwrap();
    let undeclared = engine
        .publish_event(pay, "refund.made", json!({}))
        .unwrap_err();
    assert!(
        matches!(undeclared, Error::InvalidArgument(_)),
        "{undeclared}"
    );
    let message = undeclared.to_string();
    assert!(
        message.contains("refund.made") && message.contains("order.placed, payment.taken"),
        "{message}"
    );
    let bad = engine
        .publish_event(pay, "payment.taken", json!({"amt": 12}))
        .unwrap_err();
    assert!(
        matches!(bad, Error::InvalidArgument(_)) && bad.to_string().contains("amount"),
        "{bad}"
    );
    let refused = engine
        .register_template_str(
            "namespace: ev\nname: bad\nversion: 1.0.0\nsteps:\n  - name: s\n    events: [task.completed]\n",
        )
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("engine's own")),
        "{refused:?}"
    );

    let got = sub.drain();
    assert_eq!(
        got.len(),
        1,
        "only the payment event matches payment.*: {got:?}"
    );
    let event = &got[0];
    assert_eq!(&*event.name, "payment.taken");
    assert_eq!(event.task_id, task);
    assert_eq!(event.step_id, Some(pay.step_id));
    assert_eq!(event.step_name.as_deref(), Some("pay"));
    assert_eq!(event.attempt, Some(1));
    assert_eq!(event.detail, json!({"amount": 12}));
    let names: Vec<String> = all.drain().iter().map(|e| e.name.to_string()).collect();
    assert!(
        names.contains(&"order.placed".to_string()) && !names.iter().any(|n| n == "refund.made"),
        "{names:?}"
    );
}

/// `environments` is a map of maps in every format; an environment's key other than its step
/// overrides is refused in the native format and a warning in the foreign ones, whichever
/// environment is applied.
#[tokio::test]
async fn environment_keys_that_override_nothing_are_refused_or_warned_about() {
    let native = "namespace: e\nname: n\nversion: 1.0.0\nsteps:\n  - name: s\nenvironments:\n  staging:\n    description: later\n";
    let e = engine(None)
        .await
        .register_document_str(native)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("environments.staging.description"),
        "{e}"
    );
    let rails = "name: r\nnamespace_name: e\nversion: 1.0.0\nstep_templates:\n  - name: s\n    handler_class: S\nenvironments:\n  test:\n    schema: {type: object}\n    step_templates:\n      - {name: s, handler_config: {x: 1}}\n";
    let reg = engine(Some("test"))
        .await
        .register_document_str(rails)
        .await
        .unwrap();
    assert_eq!(
        *reg.graph.step(0).config,
        json!({"x": 1}),
        "the overrides still apply"
    );
    assert!(
        reg.warnings
            .iter()
            .any(|w| w.contains("environments.test.schema")),
        "{:?}",
        reg.warnings
    );
    for bad in [
        "environments: [test]\n",
        "environments:\n  test: [step_templates]\n",
    ] {
        let text = format!(
            "name: r\nnamespace_name: e\nversion: 1.0.0\nstep_templates:\n  - name: s\n{bad}"
        );
        let e = engine(None)
            .await
            .register_document_str(&text)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("must be a map"), "{bad}: {e}");
    }
}
