//! The SQL side of the readiness comparison: the tables and function of
//! `benches/sql/readiness_baseline.sql` in a schema of their own on a PostgreSQL server, loaded
//! with the same graphs and states as the Rust side.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Executor;
use tasker_core::{StepState, TaskGraph};

const SCHEMA_SQL: &str = include_str!("../sql/readiness_baseline.sql");

/// The baseline's schema on one connection (the question is one round trip on one connection).
pub struct SqlBaseline {
    pool: PgPool,
    schema: String,
}

impl SqlBaseline {
    /// Creates the schema `tasker_bench_<pid>` with the baseline's tables and function.
    pub async fn create(url: &str) -> Result<SqlBaseline, sqlx::Error> {
        let schema = format!("tasker_bench_{}", std::process::id());
        let admin = PgPoolOptions::new().max_connections(1).connect(url).await?;
        admin
            .execute(
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str(),
            )
            .await?;
        admin.close().await;
        let search_path = format!("SET search_path TO {schema}");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    conn.execute(search_path.as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        sqlx::raw_sql(SCHEMA_SQL).execute(&pool).await?;
        Ok(SqlBaseline { pool, schema })
    }

    /// Stores task `task_id`: one row per step with its state, one per edge; then refreshes the
    /// planner's statistics, as autovacuum would on a live table.
    pub async fn load(
        &self,
        task_id: i64,
        graph: &TaskGraph,
        states: &[StepState],
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<i32> = (0..graph.len() as i32).collect();
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "INSERT INTO bench_steps (task_id, step_id, state) SELECT $1, * FROM UNNEST($2::int4[], $3::text[])",
        )
        .bind(task_id)
        .bind(&ids)
        .bind(&names)
        .execute(&self.pool)
        .await?;
        let (mut from, mut to, mut required) = (vec![], vec![], vec![]);
        for child in 0..graph.len() as u32 {
            for edge in graph.parents(child) {
                from.push(edge.step as i32);
                to.push(child as i32);
                required.push(edge.requires_success);
            }
        }
        sqlx::query(
            "INSERT INTO bench_edges (task_id, from_step, to_step, requires_success) \
             SELECT $1, * FROM UNNEST($2::int4[], $3::int4[], $4::bool[])",
        )
        .bind(task_id)
        .bind(&from)
        .bind(&to)
        .bind(&required)
        .execute(&self.pool)
        .await?;
        self.pool
            .execute("ANALYZE bench_steps; ANALYZE bench_edges")
            .await?;
        Ok(())
    }

    /// The ready steps of task `task_id`, in index order: one call of the function, one round
    /// trip (sqlx keeps the prepared statement).
    pub async fn ready(&self, task_id: i64) -> Result<Vec<i32>, sqlx::Error> {
        sqlx::query_scalar("SELECT step_id FROM bench_ready_steps($1)")
            .bind(task_id)
            .fetch_all(&self.pool)
            .await
    }

    /// One round trip that does no work: the floor under every SQL figure.
    pub async fn ping(&self) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT 1").fetch_one(&self.pool).await
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the schema.
    pub async fn drop_schema(self) -> Result<(), sqlx::Error> {
        self.pool
            .execute(format!("DROP SCHEMA {} CASCADE", self.schema).as_str())
            .await?;
        self.pool.close().await;
        Ok(())
    }
}
