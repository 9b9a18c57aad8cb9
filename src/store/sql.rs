//! How one piece of store code speaks to both databases: [`Sql`], a statement's text (one text
//! where SQLite and PostgreSQL agree, which `$1` parameters make common, or one per dialect);
//! [`Ts`], a time bound and read the same way on both, so rows are mapped once; [`Conn`] and
//! [`on_conn!`], one statement run on whichever connection a transaction has; [`read!`], one
//! read on whichever pool the store has; and [`Store::write`], the three shapes of a write.
//!
//! A body is written once and compiled once per dialect: the macros expand it in each arm, and
//! nothing generic matches on the backend again (that multiplied the code it compiled).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, FromRow, PgConnection, Postgres as Pg, Sqlite, SqliteConnection, Type};

use super::{Postgres, Store, StoreError};

/// A statement's text for each dialect.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sql {
    sqlite: &'static str,
    postgres: &'static str,
}

/// The dialect of a database: which of a [`Sql`]'s texts it reads.
pub(super) trait Dialect: Database {
    const POSTGRES: bool;
}

impl Dialect for Sqlite {
    const POSTGRES: bool = false;
}

impl Dialect for Pg {
    const POSTGRES: bool = true;
}

impl Sql {
    /// A statement both databases read alike.
    pub(super) const fn both(text: &'static str) -> Sql {
        Sql {
            sqlite: text,
            postgres: text,
        }
    }

    /// A statement written for each database.
    pub(super) const fn each(sqlite: &'static str, postgres: &'static str) -> Sql {
        Sql { sqlite, postgres }
    }

    pub(super) fn text<D: Dialect>(&self) -> &'static str {
        if D::POSTGRES { self.postgres } else { self.sqlite }
    }

    pub(super) fn query<D: Dialect>(&self) -> sqlx::query::Query<'static, D, D::Arguments> {
        sqlx::query(self.text::<D>())
    }

    pub(super) fn query_as<D: Dialect, O>(&self) -> sqlx::query::QueryAs<'static, D, O, D::Arguments>
    where
        O: for<'r> FromRow<'r, D::Row>,
    {
        sqlx::query_as(self.text::<D>())
    }

    pub(super) fn query_scalar<D: Dialect, O>(&self) -> sqlx::query::QueryScalar<'static, D, O, D::Arguments>
    where
        (O,): for<'r> FromRow<'r, D::Row>,
    {
        sqlx::query_scalar(self.text::<D>())
    }
}

/// A time as the store keeps it: ISO-8601 UTC text on SQLite ([`super::ts`], which sorts as
/// text and which SQLite's date functions read), `timestamptz` on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Ts(pub DateTime<Utc>);

impl From<Ts> for DateTime<Utc> {
    fn from(t: Ts) -> DateTime<Utc> {
        t.0
    }
}

/// `Option<DateTime>` as `Option<Ts>`, for binding.
pub(super) fn opt(t: Option<DateTime<Utc>>) -> Option<Ts> {
    t.map(Ts)
}

/// `Option<Ts>` as read, as `Option<DateTime>`.
pub(super) fn time(t: Option<Ts>) -> Option<DateTime<Utc>> {
    t.map(|t| t.0)
}

impl Type<Sqlite> for Ts {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as Database>::TypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut <Sqlite as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<'_, Sqlite>>::encode(super::ts(self.0), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Ts, BoxDynError> {
        let text = <&str as Decode<'r, Sqlite>>::decode(value)?;
        Ok(Ts(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc)))
    }
}

impl Type<Pg> for Ts {
    fn type_info() -> <Pg as Database>::TypeInfo {
        <DateTime<Utc> as Type<Pg>>::type_info()
    }
    fn compatible(ty: &<Pg as Database>::TypeInfo) -> bool {
        <DateTime<Utc> as Type<Pg>>::compatible(ty)
    }
}

impl Encode<'_, Pg> for Ts {
    fn encode_by_ref(&self, buf: &mut <Pg as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'_, Pg>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Pg> for Ts {
    fn decode(value: <Pg as Database>::ValueRef<'r>) -> Result<Ts, BoxDynError> {
        Ok(Ts(<DateTime<Utc> as Decode<'r, Pg>>::decode(value)?))
    }
}

impl sqlx::postgres::PgHasArrayType for Ts {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

/// A list bound as one parameter: a JSON array on SQLite (read with `json_each`), an array on
/// PostgreSQL (`= ANY($n)`, `unnest`), so that a statement's text does not grow with the list.
#[derive(Debug, Clone, Copy)]
pub(super) struct List<'a, T>(pub &'a [T]);

macro_rules! list_of {
    ($t:ty) => {
        impl Type<Sqlite> for List<'_, $t> {
            fn type_info() -> <Sqlite as Database>::TypeInfo {
                <String as Type<Sqlite>>::type_info()
            }
        }

        impl Encode<'_, Sqlite> for List<'_, $t> {
            fn encode_by_ref(&self, buf: &mut <Sqlite as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <String as Encode<'_, Sqlite>>::encode(serde_json::to_string(self.0)?, buf)
            }
        }

        impl Type<Pg> for List<'_, $t> {
            fn type_info() -> <Pg as Database>::TypeInfo {
                <&[$t] as Type<Pg>>::type_info()
            }
        }

        impl Encode<'_, Pg> for List<'_, $t> {
            fn encode_by_ref(&self, buf: &mut <Pg as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&[$t] as Encode<'_, Pg>>::encode_by_ref(&self.0, buf)
            }
        }
    };
}
list_of!(String);
list_of!(i64);

/// A count as the store binds it: PostgreSQL keeps these in `integer`, so a count past its
/// range is stored as its largest value (SQLite never gets that far either).
pub(super) fn count(n: u32) -> i64 {
    i64::from(n.min(i32::MAX as u32))
}

/// A count as read back.
pub(super) fn uncount(n: i64) -> u32 {
    n.try_into().unwrap_or(if n < 0 { 0 } else { u32::MAX })
}

/// The database behind a [`Store`].
#[derive(Clone, Debug)]
pub(super) enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(Postgres),
}

/// A connection inside one of [`Store::write`]'s shapes, on either database.
pub(super) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl<'c> From<&'c mut SqliteConnection> for Conn<'c> {
    fn from(c: &'c mut SqliteConnection) -> Conn<'c> {
        Conn::Sqlite(c)
    }
}

impl<'c> From<&'c mut PgConnection> for Conn<'c> {
    fn from(c: &'c mut PgConnection) -> Conn<'c> {
        Conn::Postgres(c)
    }
}

impl Conn<'_> {
    /// The same connection again, for the next statement.
    pub(super) fn re(&mut self) -> Conn<'_> {
        match self {
            Conn::Sqlite(c) => Conn::Sqlite(c),
            Conn::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// Runs `$body` with `$c` the connection of `$conn` (a [`Conn`]) and `$D` its database type.
macro_rules! on_conn {
    ($conn:expr, |$c:ident, $D:ident| $body:expr) => {
        match $conn {
            $crate::store::sql::Conn::Sqlite($c) => {
                #[allow(dead_code)]
                type $D = sqlx::Sqlite;
                $body
            }
            $crate::store::sql::Conn::Postgres($c) => {
                #[allow(dead_code)]
                type $D = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(super) use on_conn;

/// Reads with `$body` from `$store`'s pool `$pool` (`$D` its database type), within the store's
/// deadline; a future of `Result<T, StoreError>`.
macro_rules! read {
    ($store:expr, |$pool:ident, $D:ident| $body:expr) => {
        $store.bounded(async {
            match &$store.db {
                $crate::store::sql::Db::Sqlite($pool) => {
                    #[allow(dead_code)]
                    type $D = sqlx::Sqlite;
                    $body
                }
                $crate::store::sql::Db::Postgres(pg) => {
                    #[allow(dead_code)]
                    type $D = sqlx::Postgres;
                    let $pool = pg.pool();
                    $body
                }
            }
        })
    };
}
pub(super) use read;

/// All rows of `$sql` as `$T`, with these parameters, read from `$store`'s pool (see [`read!`]).
macro_rules! rows {
    ($store:expr, $sql:expr, $T:ty $(, $bind:expr)* $(,)?) => {
        $crate::store::sql::read!($store, |pool, D| Ok($sql
            .query_as::<D, $T>()
            $(.bind($bind))*
            .fetch_all(pool)
            .await?))
    };
}
pub(super) use rows;

/// How a write runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// One transaction: `BEGIN IMMEDIATE` on SQLite (the write lock is taken before the first
    /// read), fenced on PostgreSQL.
    Transaction,
    /// One statement: on its own connection on SQLite, in a fenced transaction on PostgreSQL.
    Statement,
    /// One statement that is not fenced (a delivery's outcome under its claim, a health probe).
    Unfenced,
}

/// What a write's body asks of its transaction: to commit what it wrote, or (it wrote nothing)
/// to roll back, which on PostgreSQL also spares the fence's check.
pub(super) enum End<T> {
    Commit(T),
    Rollback(T),
}

impl Store {
    /// `call` within this store's deadline. A database that accepted the connection and never
    /// answers fails the call with [`StoreError::Timeout`] instead of stalling its caller. The
    /// call is boxed here, once, so that a caller's own future does not grow by the call's.
    pub(super) async fn bounded<T>(&self, call: impl Future<Output = anyhow::Result<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.deadline, Box::pin(call)).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.deadline)),
        }
    }

    /// Runs `body` on a connection as `how` says, within the store's deadline. On SQLite a
    /// connection whose body failed is closed instead of going back to the pool: after
    /// SQLITE_FULL or an I/O error SQLite may leave a transaction half open on it, and the next
    /// user of that connection would write into a transaction that never commits (and believe
    /// it had).
    pub(super) async fn write<T>(
        &self,
        how: Write,
        body: impl AsyncFnOnce(Conn<'_>) -> anyhow::Result<End<T>>,
    ) -> Result<T, StoreError> {
        self.bounded(async {
            match &self.db {
                Db::Sqlite(pool) => {
                    let mut conn = pool.acquire().await?;
                    let done = sqlite_write(&mut conn, how, body).await;
                    if done.is_err() {
                        let _ = conn.close().await;
                    }
                    done
                }
                Db::Postgres(pg) if how == Write::Unfenced => {
                    let mut conn = pg.pool().acquire().await?;
                    match body(Conn::Postgres(&mut conn)).await? {
                        End::Commit(v) | End::Rollback(v) => Ok(v),
                    }
                }
                Db::Postgres(pg) => {
                    let term = pg.fence().current()?;
                    let mut tx = pg.pool().begin().await?;
                    match body(Conn::Postgres(&mut tx)).await? {
                        End::Commit(v) => {
                            pg.commit_fenced(tx, &term).await?;
                            Ok(v)
                        }
                        End::Rollback(v) => Ok(v),
                    }
                }
            }
        })
        .await
    }
}

async fn sqlite_write<T>(
    conn: &mut SqliteConnection,
    how: Write,
    body: impl AsyncFnOnce(Conn<'_>) -> anyhow::Result<End<T>>,
) -> anyhow::Result<T> {
    use sqlx::Connection as _;
    if how != Write::Transaction {
        let (End::Commit(v) | End::Rollback(v)) = body(Conn::Sqlite(conn)).await?;
        return Ok(v);
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    match body(Conn::Sqlite(&mut tx)).await? {
        End::Commit(v) => {
            tx.commit().await?;
            Ok(v)
        }
        End::Rollback(v) => Ok(v),
    }
}

/// What the store's errors default to: a fresh call gets this long.
pub const DEADLINE: Duration = Duration::from_secs(30);
