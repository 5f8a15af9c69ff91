//! The SQL side of the readiness comparison: the tables and function of
//! `benches/sql/readiness_baseline.sql` in a fresh schema on a PostgreSQL server, loaded
//! with the same graphs and states as the Rust side.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Executor;
use tasker_core::{StepState, TaskGraph};

const SCHEMA_SQL: &str = include_str!("../sql/readiness_baseline.sql");

/// The baseline's tables on one connection (the question is one round trip on one connection).
pub struct SqlBaseline {
    pool: PgPool,
}

impl SqlBaseline {
    /// Creates the baseline's tables and function at `url` (a fresh schema: see
    /// [`crate::stores::FreshStore`]).
    pub async fn create(url: &str) -> Result<SqlBaseline, sqlx::Error> {
        let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
        sqlx::raw_sql(SCHEMA_SQL).execute(&pool).await?;
        Ok(SqlBaseline { pool })
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
}
