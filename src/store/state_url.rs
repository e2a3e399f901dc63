//! The shared store's address: a `postgres://` URL with libpq's conventions, turned once into a
//! validated [`StateUrl`].
//!
//! Hand-written on top of the `url` crate rather than handed to `tokio_postgres::Config`'s own
//! parser: that parser knows only `sslmode=disable|prefer|require` and no `sslrootcert`, while
//! teams write libpq URLs with `verify-full` and a CA file, and every message about the store must
//! name its host without ever showing the password.

use std::path::PathBuf;

use crate::secret::Secret;

/// libpq's `sslmode`s that ferry honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise (libpq's default).
    Prefer,
    /// TLS, the certificate unchecked (checked against `sslrootcert` when one is given).
    Require,
    /// TLS, the certificate must chain to `sslrootcert` (any host name).
    VerifyCa,
    /// TLS, the certificate must chain to `sslrootcert` (or the system roots) and name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The mode as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the PostgreSQL store lives and how to reach it.
#[derive(Clone)]
pub struct StateUrl {
    /// Host name, IP address, or a Unix socket folder (starts with `/`).
    pub host: String,
    /// TCP port (5432).
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Its password, if any.
    pub password: Option<Secret>,
    /// Database.
    pub dbname: String,
    /// TLS.
    pub sslmode: SslMode,
    /// CA certificates (PEM) for `verify-ca` / `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Seconds to wait for a connection.
    pub connect_timeout: Option<u64>,
    /// `application_name`.
    pub application_name: Option<String>,
}

impl std::fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateUrl({})", self.endpoint())
    }
}

impl StateUrl {
    /// `user@host:port/dbname`, for messages: never the password.
    pub fn endpoint(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}@{}/.s.PGSQL.{} db {}", self.user, self.host, self.port, self.dbname)
        } else if self.host.contains(':') {
            format!("{}@[{}]:{}/{}", self.user, self.host, self.port, self.dbname)
        } else {
            format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
        }
    }

    /// Parses a libpq URL. `env` supplies libpq's fallbacks (`PGPASSWORD`, and `USER` for the
    /// role when the URL names none). The error says what is wrong, never echoing the URL (it
    /// may hold a password).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<StateUrl, String> {
        let text = text.trim();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(
                "the state URL must start with postgres:// or postgresql:// (libpq's URL form)".into()
            );
        }
        // libpq allows an empty host (`postgres://u@/db?host=/run/postgresql`); the url crate
        // does not, so an empty one is stood in for, and read back as empty.
        let (scheme, rest) = text.split_once("://").unwrap_or((text, ""));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let empty_host = authority.is_empty() || authority.ends_with('@');
        let text = if empty_host {
            format!("{scheme}://{authority}{EMPTY_HOST}{}", &rest[authority_end..])
        } else {
            text.to_string()
        };
        let url = url::Url::parse(&text).map_err(|e| format!("the state URL is not a valid URL ({e})"))?;
        let decode = |s: &str| -> Result<String, String> {
            percent_decode(s).ok_or_else(|| "the state URL has a bad %-escape or non-UTF-8 text".to_string())
        };
        let mut host = match url.host() {
            Some(url::Host::Domain(EMPTY_HOST)) => String::new(),
            Some(url::Host::Domain(d)) => decode(d)?,
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => String::new(),
        };
        let mut port = url.port().unwrap_or(5432);
        let mut user = decode(url.username())?;
        let mut password = url.password().map(decode).transpose()?;
        let path = url.path().trim_start_matches('/');
        if path.contains('/') {
            return Err("the state URL's path must be just the database name".into());
        }
        let mut dbname = decode(path)?;
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        let mut connect_timeout = None;
        let mut application_name = None;
        for (key, value) in url.query_pairs() {
            let value = value.into_owned();
            match &*key {
                "sslmode" => {
                    sslmode = SslMode::parse(&value).ok_or_else(|| {
                        format!(
                            "sslmode `{value}` is not one of disable, prefer, require, verify-ca, verify-full"
                        )
                    })?;
                }
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                "connect_timeout" => {
                    connect_timeout = Some(value.parse::<u64>().map_err(|_| {
                        format!("connect_timeout `{value}` is not a whole number of seconds")
                    })?);
                }
                "application_name" => application_name = Some(value),
                "host" => host = value,
                "port" => port = value.parse().map_err(|_| format!("port `{value}` is not a TCP port"))?,
                "user" => user = value,
                "password" => password = Some(value),
                "dbname" => dbname = value,
                other => {
                    return Err(format!(
                        "the state URL has the parameter `{other}`, which ferry does not know; it knows sslmode, sslrootcert, connect_timeout, application_name, host, port, user, password and dbname"
                    ));
                }
            }
        }
        if host.is_empty() {
            return Err("the state URL names no host (postgres://USER:PASSWORD@HOST:PORT/DB)".into());
        }
        if host.contains(',') {
            return Err("the state URL names several hosts; ferry connects to one".into());
        }
        if port == 0 {
            return Err("the state URL's port must not be 0".into());
        }
        if user.is_empty() {
            user = env("USER").or_else(|| env("LOGNAME")).unwrap_or_default();
        }
        if user.is_empty() {
            return Err("the state URL names no user, and USER is not set".into());
        }
        if dbname.is_empty() {
            dbname.clone_from(&user);
        }
        if password.is_none() {
            password = env("PGPASSWORD").filter(|p| !p.is_empty());
        }
        if sslrootcert.is_some() && sslmode == SslMode::Require {
            // libpq: `require` with a root certificate checks the chain, as verify-ca does.
            sslmode = SslMode::VerifyCa;
        }
        if sslmode == SslMode::VerifyCa && sslrootcert.is_none() {
            return Err(
                "sslmode=verify-ca needs sslrootcert=PATH (the CA that signed the server's certificate)"
                    .into(),
            );
        }
        if host.starts_with('/')
            && matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull | SslMode::Require)
        {
            return Err(format!("sslmode={} cannot apply to a Unix socket", sslmode.as_str()));
        }
        Ok(StateUrl {
            host,
            port,
            user,
            password: password.map(Secret::new),
            dbname,
            sslmode,
            sslrootcert,
            connect_timeout,
            application_name,
        })
    }
}

/// Stands in for an empty host while the `url` crate parses (a name no URL can hold: `_`
/// starts no DNS label a user would write, and it is replaced before anything connects).
const EMPTY_HOST: &str = "ferry.empty.host._";

/// `%XX` decoding into UTF-8 (the `url` crate leaves user info and path encoded).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<StateUrl, String> {
        StateUrl::parse(text, &no_env)
    }

    #[test]
    fn reads_libpq_urls() {
        let url = parse("postgres://ferry:p%40ss%2Fw@db.example.com:6432/records?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3").unwrap();
        assert_eq!(url.host, "db.example.com");
        assert_eq!(url.port, 6432);
        assert_eq!(url.user, "ferry");
        assert_eq!(url.password.as_ref().unwrap().expose(), "p@ss/w");
        assert_eq!(url.dbname, "records");
        assert_eq!(url.sslmode, SslMode::VerifyFull);
        assert_eq!(url.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(url.connect_timeout, Some(3));
        assert_eq!(url.endpoint(), "ferry@db.example.com:6432/records");
        assert!(!format!("{url:?}").contains("p@ss"));

        let url = parse("postgresql://10.0.0.5/").unwrap_err();
        assert!(url.contains("no user"), "{url}");
        let url = StateUrl::parse("postgresql://10.0.0.5", &|k| (k == "USER").then(|| "me".into())).unwrap();
        assert_eq!((url.user.as_str(), url.dbname.as_str(), url.port), ("me", "me", 5432));
        assert_eq!(url.sslmode, SslMode::Prefer);
        let url = parse("postgres://u@[::1]:5433/d?sslmode=disable").unwrap();
        assert_eq!(url.endpoint(), "u@[::1]:5433/d");
        let url = parse("postgres://u@/d?host=/run/postgresql").unwrap();
        assert_eq!(url.host, "/run/postgresql");
        let url = parse("postgres://u@h/d?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(
            url.sslmode,
            SslMode::VerifyCa,
            "libpq: require with a root certificate verifies the chain"
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour_without_echoing_the_password() {
        for (text, wanted) in [
            ("mysql://u:hunter2@h/d", "postgres://"),
            ("postgres://u:hunter2@h/d?sslmode=allow", "sslmode `allow`"),
            ("postgres://u:hunter2@h/d?sslmode=verify-ca", "needs sslrootcert"),
            ("postgres://u:hunter2@h/d?target_session_attrs=any", "`target_session_attrs`"),
            ("postgres://u:hunter2@h1,h2/d", "several hosts"),
            ("postgres://u:hunter2@h/d/e", "just the database"),
            ("postgres://u:hunter2@h:99999/d", "valid URL"),
            ("postgres://u:hunter2@h/d?connect_timeout=x", "connect_timeout"),
            ("postgres://u:hunter2@/d", "no host"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(wanted), "{text}: {error}");
            assert!(!error.contains("hunter2"), "{text}: {error}");
        }
    }

    proptest::proptest! {
        /// No input panics, and no error repeats the password.
        #[test]
        fn never_panics_nor_leaks(tail in "[ -~]{0,80}") {
            let text = format!("postgres://u:SeCrEt99@{tail}");
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.contains("SeCrEt99"));
            }
            let _ = parse(&tail);
        }
    }
}
