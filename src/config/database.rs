//! Where the history lives: a SQLite file (a path or `sqlite://path`, the default) or a
//! PostgreSQL database (`postgres://` or `postgresql://`). A password never stays in the URL
//! that is shown: it is taken out into a [`Secret`].

use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::Url;

use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(PgTarget),
}

/// A PostgreSQL database: the URL without its password, and the password.
#[derive(Debug, Clone, PartialEq)]
pub struct PgTarget {
    url: Url,
    pub password: Option<Secret>,
}

impl PgTarget {
    /// The URL to connect with, password excluded.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl Database {
    /// Reads `text` as written in the config or on the command line; a relative SQLite path is
    /// relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Database, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty; write a file path or a postgres:// URL".into());
        }
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            let mut url = Url::parse(text).map_err(|e| format!("is not a valid PostgreSQL URL: {e}"))?;
            if url.host_str().is_none_or(str::is_empty) && !url.query_pairs().any(|(k, _)| k == "host") {
                return Err("names no host (write postgres://user@host:5432/database)".into());
            }
            let mut password = url
                .password()
                .map(|p| Secret::new(percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned()));
            let _ = url.set_password(None);
            // The URL is shown (logs, errors, `linkwatch check`): no secret may stay in it, and
            // PostgreSQL URLs can carry one in the query too.
            let mut kept = Vec::new();
            for (key, value) in url.query_pairs() {
                match &*key {
                    "password" if password.is_some() => {
                        return Err("has a password both before the @ and in ?password=; set it once".into());
                    }
                    "password" => password = Some(Secret::new(value.into_owned())),
                    "sslpassword" => {
                        return Err(
                            "has ?sslpassword=, which would be shown in logs; use a client key without a passphrase"
                                .into(),
                        );
                    }
                    _ => kept.push((key.into_owned(), value.into_owned())),
                }
            }
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(&kept);
            }
            return Ok(Database::Postgres(PgTarget { url, password }));
        }
        let path = match lower.strip_prefix("sqlite://") {
            Some(_) => &text["sqlite://".len()..],
            None if lower.contains("://") => {
                return Err(format!(
                    "\"{}\" is neither a file path nor a postgres:// URL",
                    text.split("://").next().unwrap_or_default()
                ));
            }
            None => text,
        };
        let path = PathBuf::from(path);
        Ok(Database::Sqlite(if path.is_relative() {
            base.join(path)
        } else {
            path
        }))
    }

    /// The same database with `password` (from `database_password_file`/`_env`), if it is
    /// PostgreSQL.
    pub fn with_password(self, password: Option<Secret>) -> Result<Database, String> {
        match (self, password) {
            (db, None) => Ok(db),
            (Database::Postgres(t), Some(_)) if t.password.is_some() => {
                Err("the URL has a password already; set it in one place only".into())
            }
            (Database::Postgres(t), Some(p)) => Ok(Database::Postgres(PgTarget { password: Some(p), ..t })),
            (Database::Sqlite(_), Some(_)) => Err("a password is for a PostgreSQL database, not a SQLite file".into()),
        }
    }

    /// The same file or the same server and database, whatever the password.
    pub fn same_place(&self, other: &Database) -> bool {
        match (self, other) {
            (Database::Sqlite(a), Database::Sqlite(b)) => a == b,
            (Database::Postgres(a), Database::Postgres(b)) => a.url == b.url,
            _ => false,
        }
    }

    /// The SQLite file when it is one that is not there: a command that only reads must not
    /// create it by opening it. (A PostgreSQL database that is missing says so when connected to.)
    pub fn missing_file(&self) -> Option<&Path> {
        self.sqlite_path().filter(|path| !path.exists())
    }

    /// The SQLite file, if it is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }
}

/// The path, or the URL without its password.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(t) => write!(f, "{}", t.url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        let base = Path::new("/etc/linkwatch");
        assert_eq!(
            Database::parse("linkwatch.db", base).unwrap(),
            Database::Sqlite("/etc/linkwatch/linkwatch.db".into())
        );
        assert_eq!(
            Database::parse("sqlite:///var/lib/x.db", base).unwrap(),
            Database::Sqlite("/var/lib/x.db".into())
        );
        let pg = Database::parse("postgresql://lw:s%40cret@db.example:5432/linkwatch", base).unwrap();
        assert_eq!(pg.to_string(), "postgresql://lw@db.example:5432/linkwatch");
        assert!(!format!("{pg:?}").contains("s@cret"), "{pg:?}");
        let Database::Postgres(t) = &pg else { panic!() };
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("s@cret"));
        assert!(pg.clone().with_password(Some(Secret::new("x"))).is_err());
        let query = Database::parse("postgres://lw@db/x?sslmode=require&password=s3cret", base).unwrap();
        assert_eq!(query.to_string(), "postgres://lw@db/x?sslmode=require");
        let Database::Postgres(t) = &query else { panic!() };
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(Database::parse("postgres://lw:a@db/x?password=b", base).is_err());
        assert!(Database::parse("postgres://lw@db/x?sslpassword=b", base).is_err());
        assert!(Database::parse("mysql://h/db", base).unwrap_err().contains("mysql"));
        assert!(Database::parse("postgres:///db", base).is_err());
        assert!(
            Database::parse("a.db", base)
                .unwrap()
                .with_password(Some(Secret::new("x")))
                .is_err()
        );
    }
}
