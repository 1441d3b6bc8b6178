//! What can go wrong below the seam, sorted so the API can answer right: an unreachable store is a 503
//! the client retries, a conflict a 409, anything else a 500.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time: the request may succeed if retried later.
    #[error("{store} unavailable: {reason}")]
    Unavailable { store: &'static str, reason: String },
    /// A write collided with a record that exists (a unique key) or no longer exists (a foreign key).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("redis: {0}")]
    Redis(fred::error::Error),
    #[error("migration: {0}")]
    Migration(String),
    /// A store setting that cannot work (a CA file that does not load): not retried.
    #[error("configuration: {0}")]
    Config(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(&'static str),
    #[error("write failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the cause is an unreachable or unresponsive store, rather than a bug or bad data.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let unreachable = match &err {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => true,
            // Postgres: connection exceptions (08…), operator intervention (57…: shutting down, starting up).
            E::Database(db) => db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
            _ => false,
        };
        if unreachable {
            return StoreError::Unavailable { store: "database", reason: err.to_string() };
        }
        if let E::Database(db) = &err {
            use sqlx::error::ErrorKind as K;
            match db.kind() {
                K::UniqueViolation => return StoreError::Conflict("a record with this key exists"),
                K::ForeignKeyViolation => return StoreError::Conflict("a record this one refers to is gone"),
                _ => {}
            }
        }
        StoreError::Database(err)
    }
}

impl From<rusqlite::Error> for StoreError {
    /// The embedded writer thread's connection: a constraint is a conflict like the pool's; anything else
    /// (a full disk, a lock held past the busy timeout) fails the write, and the caller sees a 500 or, past
    /// the store timeout, a 503.
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        if let rusqlite::Error::SqliteFailure(failure, _) = &err {
            match failure.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    return StoreError::Conflict("a record with this key exists");
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                    return StoreError::Conflict("a record this one refers to is gone");
                }
                _ => {}
            }
        }
        StoreError::Failed(err.to_string())
    }
}

impl From<fred::error::Error> for StoreError {
    fn from(err: fred::error::Error) -> Self {
        use fred::error::ErrorKind as K;
        let text = err.details();
        let unreachable = matches!(err.kind(), K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Cluster | K::Routing)
            // Replies of a Redis that is loading, failing over or without a quorum.
            || ["LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY"].iter().any(|p| text.starts_with(p))
            // A cluster whose nodes do not agree yet (just created, or a node rejoining).
            || text.contains("cluster state");
        if unreachable {
            StoreError::Unavailable { store: "redis", reason: err.to_string() }
        } else {
            StoreError::Redis(err)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
