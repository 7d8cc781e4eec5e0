//! What a failed statement says: that the database refused the rows it
//! carried, or that the database itself is unavailable; and what of the
//! error may be logged.
//!
//! A save statement carries the rows of many orders. When PostgreSQL
//! refuses it because of what a row holds (a value `text` cannot store, a
//! constraint a row breaks), the other rows are not at fault and smaller
//! statements without that row succeed ([`super::statements`]). Any other
//! failure (a lost connection, a server starting or stopping, a full disk,
//! a read-only standby, a missing table, a timeout) would fail every
//! statement, and is an outage, which pauses intake instead of spending the
//! orders' attempts. When in doubt a failure is an outage: taking an outage
//! for refused rows would dead-letter good orders.
//!
//! The server's message, detail and context are never logged: they may
//! quote a value (the failing row of a check constraint, a bound
//! parameter). The SQLSTATE and the names of the constraint, table and
//! column are the schema's, not the data's.

use std::borrow::Cow;

use sqlx::postgres::PgDatabaseError;

/// What a failed statement says about its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The database answered and refused what the statement carried: a
    /// statement without the offending rows may succeed.
    Refused,
    /// Any statement would have failed the same way.
    Unavailable,
}

/// Only an error the server sent, with a SQLSTATE of a class that depends
/// on the rows, is a refusal; everything else (client-side failures, a
/// timeout, a server error without a code) is an outage.
pub(super) fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Database(error) => error
            .code()
            .map_or(Failure::Unavailable, |code| of_sqlstate(&code)),
        _ => Failure::Unavailable,
    }
}

/// By SQLSTATE class. The rows are at fault for
/// - 21 cardinality violation (the same key twice in one statement),
/// - 22 data exception (a NUL in `text`: 22021; a number out of range:
///   22003; a string too long: 22001),
/// - 23 integrity constraint violation (a check, not-null, foreign-key or
///   unique constraint a row breaks; the conflict on `order_id` is no
///   error: `ON CONFLICT DO NOTHING`),
/// - 54 program limit exceeded (an index row too large for one value, or a
///   statement too large for its batch: smaller statements pass).
///
/// Every other class says the database cannot take any statement now or at
/// all, whatever the rows: 08 connection exception, 25 invalid transaction
/// state (a read-only standby after a failover), 28 authorization, 3D/3F/42
/// a missing database, schema, table or privilege, 40 serialization failure
/// or deadlock, 53 insufficient resources (disk full, out of memory, too
/// many connections), 55 lock not available, 57 operator intervention (a
/// statement cancelled by `statement_timeout`, a shutdown), 58 system
/// error, XX internal error, and any class PostgreSQL adds later.
fn of_sqlstate(code: &str) -> Failure {
    match code.get(..2) {
        Some("21" | "22" | "23" | "54") => Failure::Refused,
        _ => Failure::Unavailable,
    }
}

/// What of a failed statement's error may leave the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Diagnosis {
    /// `database` for an error the server sent, else what failed in the
    /// client (`io: timed out`, `pool timed out`, …).
    pub failure: Cow<'static, str>,
    pub sqlstate: Option<String>,
    pub constraint: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
}

impl Diagnosis {
    pub fn of(error: &sqlx::Error) -> Self {
        let failure = match error {
            sqlx::Error::Database(_) => Cow::Borrowed("database"),
            // The kind only ("connection refused", "timed out"): the
            // message of an I/O error may name the server.
            sqlx::Error::Io(error) => Cow::Owned(format!("io: {}", error.kind())),
            sqlx::Error::Tls(_) => Cow::Borrowed("tls"),
            sqlx::Error::Protocol(_) => Cow::Borrowed("protocol"),
            sqlx::Error::PoolTimedOut => Cow::Borrowed("pool timed out"),
            sqlx::Error::PoolClosed => Cow::Borrowed("pool closed"),
            sqlx::Error::WorkerCrashed => Cow::Borrowed("worker crashed"),
            _ => Cow::Borrowed("client"),
        };
        let Some(database) = error.as_database_error() else {
            return Self {
                failure,
                sqlstate: None,
                constraint: None,
                table: None,
                column: None,
            };
        };
        let column = database
            .try_downcast_ref::<PgDatabaseError>()
            .and_then(PgDatabaseError::column);
        Self {
            failure,
            sqlstate: database.code().map(Cow::into_owned),
            constraint: database.constraint().map(str::to_owned),
            table: database.table().map(str::to_owned),
            column: column.map(str::to_owned),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;

    use sqlx::error::{DatabaseError, ErrorKind};

    use super::*;

    /// An error the server sent with this SQLSTATE, and a message that
    /// quotes a value, as PostgreSQL's may.
    #[derive(Debug)]
    struct ServerError(Option<&'static str>);

    impl std::fmt::Display for ServerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("value \"tok_secret\" is refused")
        }
    }

    impl std::error::Error for ServerError {}

    impl DatabaseError for ServerError {
        fn message(&self) -> &str {
            "value \"tok_secret\" is refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            self.0.map(Cow::Borrowed)
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn constraint(&self) -> Option<&str> {
            Some("orders_total_minor_check")
        }
        fn table(&self) -> Option<&str> {
            Some("orders")
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ServerError(Some(code))))
    }

    #[test]
    fn a_value_or_a_constraint_a_row_breaks_is_a_refusal_of_the_rows() {
        for (code, what) in [
            ("22021", "a NUL byte in text"),
            ("22001", "a string too long"),
            ("22003", "a number out of range"),
            ("22P02", "an invalid text representation"),
            ("23514", "a check constraint"),
            ("23502", "a not-null constraint"),
            ("23505", "a unique index other than the order id's"),
            ("23503", "a foreign key"),
            ("21000", "the same key twice in one statement"),
            ("54000", "an index row too large"),
            ("54001", "a statement too complex"),
        ] {
            assert_eq!(classify(&server(code)), Failure::Refused, "{code}: {what}");
        }
    }

    #[test]
    fn a_database_that_cannot_take_any_statement_is_unavailable() {
        for (code, what) in [
            ("08006", "connection failure"),
            ("08P01", "protocol violation"),
            ("57P01", "admin shutdown"),
            ("57P03", "cannot connect now"),
            ("57014", "cancelled by statement_timeout"),
            ("53100", "disk full"),
            ("53200", "out of memory"),
            ("53300", "too many connections"),
            ("40001", "serialization failure"),
            ("40P01", "deadlock"),
            ("25006", "read-only transaction: a standby"),
            ("42P01", "no such table"),
            ("42501", "no privilege"),
            ("3D000", "no such database"),
            ("28P01", "authentication failed"),
            ("55P03", "lock not available"),
            ("58030", "I/O error"),
            ("XX000", "internal error"),
            ("XX001", "data corrupted"),
            ("P0001", "raised by a function"),
            ("0A000", "feature not supported"),
            ("2", "not a SQLSTATE"),
            ("", "empty"),
        ] {
            assert_eq!(
                classify(&server(code)),
                Failure::Unavailable,
                "{code}: {what}"
            );
        }
    }

    #[test]
    fn client_side_failures_and_errors_without_a_code_are_unavailable() {
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
        for error in [
            sqlx::Error::Io(timed_out),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Protocol("unexpected message".into()),
            sqlx::Error::RowNotFound,
            sqlx::Error::Database(Box::new(ServerError(None))),
        ] {
            assert_eq!(classify(&error), Failure::Unavailable, "{error:?}");
        }
    }

    #[test]
    fn a_diagnosis_names_the_sqlstate_and_the_schema_never_the_message() {
        let diagnosis = Diagnosis::of(&server("23514"));
        assert_eq!(
            diagnosis,
            Diagnosis {
                failure: Cow::Borrowed("database"),
                sqlstate: Some("23514".to_owned()),
                constraint: Some("orders_total_minor_check".to_owned()),
                table: Some("orders".to_owned()),
                column: None,
            }
        );
        assert!(!format!("{diagnosis:?}").contains("tok_secret"));
    }

    #[test]
    fn a_client_side_failure_is_diagnosed_by_its_kind_only() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "db.internal.example:5432",
        );
        let diagnosis = Diagnosis::of(&sqlx::Error::Io(refused));
        assert_eq!(diagnosis.failure, "io: connection refused");
        assert_eq!(diagnosis.sqlstate, None);
        assert!(!format!("{diagnosis:?}").contains("example"));
        assert_eq!(
            Diagnosis::of(&sqlx::Error::PoolTimedOut).failure,
            "pool timed out"
        );
    }
}
