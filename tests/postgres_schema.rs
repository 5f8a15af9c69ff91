//! A fresh PostgreSQL schema per test. Shared by the core's scenario suite
//! (`core/tests/support`) and the cross-crate tests (`tests/`), which include this file.

/// The URL of a fresh, empty schema on the test PostgreSQL server (`TASKER_TEST_POSTGRES_URL`,
/// which the test command sets), or `None` without one.
pub async fn postgres_schema() -> Option<String> {
    use sqlx::{Connection, Executor};
    let base = std::env::var("TASKER_TEST_POSTGRES_URL").ok()?;
    let schema = format!("tasker_test_{}", tasker_core::TaskId::new().0.simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("connect to TASKER_TEST_POSTGRES_URL: {e}"));
    conn.execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .expect("create a test schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}
