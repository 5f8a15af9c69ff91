//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the migration files
//! found at compile time, and cargo does not otherwise watch the folder (as sqlx's docs say).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
