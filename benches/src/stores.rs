//! A fresh, empty store for each benchmark configuration: nothing left over from an earlier run
//! skews a figure, and nothing is left behind.

use sqlx::postgres::PgPoolOptions;
use sqlx::Executor;

/// The stores benchmarked end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `memory:`.
    Memory,
    /// An SQLite file (WAL) in a temporary directory.
    Sqlite,
    /// A schema of its own on the server at [`crate::postgres_url`].
    Postgres,
}

impl StoreKind {
    /// A short name for benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A fresh store: its URL, and what to remove afterwards.
pub struct FreshStore {
    /// The URL to open.
    pub url: String,
    dir: Option<std::path::PathBuf>,
    schema: Option<(String, String)>,
}

impl FreshStore {
    /// Makes an empty store of `kind`; `label` names its file or schema.
    pub async fn new(kind: StoreKind, label: &str) -> anyhow::Result<FreshStore> {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        match kind {
            StoreKind::Memory => Ok(FreshStore {
                url: "memory:".into(),
                dir: None,
                schema: None,
            }),
            StoreKind::Sqlite => {
                let dir = std::env::temp_dir()
                    .join(format!("tasker_bench_{}_{label}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                Ok(FreshStore {
                    url: format!("sqlite://{}/bench.db", dir.display()),
                    dir: Some(dir),
                    schema: None,
                })
            }
            StoreKind::Postgres => {
                let base = crate::postgres_url();
                let schema = format!("tasker_bench_{}_{label}", std::process::id());
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&base)
                    .await?;
                admin
                    .execute(
                        format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
                            .as_str(),
                    )
                    .await?;
                admin.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                Ok(FreshStore {
                    url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    dir: None,
                    schema: Some((base, schema)),
                })
            }
        }
    }

    /// Removes the file or schema.
    pub async fn remove(self) -> anyhow::Result<()> {
        if let Some(dir) = self.dir {
            std::fs::remove_dir_all(dir)?;
        }
        if let Some((base, schema)) = self.schema {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(&base)
                .await?;
            admin
                .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
                .await?;
            admin.close().await;
        }
        Ok(())
    }
}

/// Whether the PostgreSQL server at [`crate::postgres_url`] answers; the benches that need it
/// say so and skip it when it does not — unless `TASKER_BENCH_POSTGRES_URL` names it, in which
/// case it must answer (the test command sets it) and this panics.
pub async fn postgres_available() -> bool {
    match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect(&crate::postgres_url())
        .await
    {
        Ok(pool) => {
            pool.close().await;
            true
        }
        Err(e) if std::env::var_os("TASKER_BENCH_POSTGRES_URL").is_some() => {
            panic!("TASKER_BENCH_POSTGRES_URL is set but its server does not answer: {e}")
        }
        Err(e) => {
            eprintln!(
                "PostgreSQL at {} is not reachable ({e}): skipping its benchmarks",
                crate::postgres_url()
            );
            false
        }
    }
}
