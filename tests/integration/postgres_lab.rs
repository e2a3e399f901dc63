//! The lab's PostgreSQL itself, before any ferry code uses it: the shared-store tests rest on
//! it, so what they assume is proved here with libpq's own client (`psql`). The role `ferry`
//! logs in by password over TLS that verifies against the lab CA (and the bridge address or the
//! name pg.ferry.lab), a wrong password or another CA is refused, plain TCP works too (to test
//! `sslmode=disable`), the server listens on the bridge address only, `pg-db` gives an empty
//! database, and `pg-stop` / `pg-start` stop and restart it with its data.
//!
//! Every test here connects over TCP, and one stops the server: they all hold [`POSTGRES`].

use std::process::{Command, Output};
use std::sync::MutexGuard;

use crate::lab::{Lab, POSTGRES, PostgresBack, lab};

/// [`POSTGRES`], also when a test that held it failed.
fn hold() -> MutexGuard<'static, ()> {
    POSTGRES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `psql URL -X -At -c SQL` with a clean environment. A password in the URL goes to psql
/// through `PGPASSWORD`, not its argv; libpq reads the rest of the URL as it is.
fn psql(url: &str, sql: &str) -> Output {
    match url.strip_prefix("postgres://ferry:").and_then(|rest| rest.split_once('@')) {
        Some((password, rest)) => psql_as(&format!("postgres://ferry@{rest}"), Some(password), sql),
        None => psql_as(url, None, sql),
    }
}

/// `psql CONNINFO -X -At -c SQL` (a URL or `key=value` words), the password in `PGPASSWORD`.
fn psql_as(conninfo: &str, password: Option<&str>, sql: &str) -> Output {
    let mut command = Command::new("psql");
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, conninfo]).output().unwrap()
}

/// psql's stdout, failing the test with both outputs when psql failed.
fn psql_ok(url: &str, sql: &str) -> String {
    let out = psql(url, sql);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "psql {url} -c {sql:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout.trim_end().to_string()
}

/// psql's stderr, failing the test when psql succeeded.
fn psql_refused(url: &str, sql: &str) -> String {
    let out = psql(url, sql);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "psql {url} -c {sql:?} should have failed:\n{stdout}\n{stderr}");
    stderr.into_owned()
}

/// `FERRY_LAB_PG_URL` from the lab's lab.env.
fn lab_env_url(lab: &Lab) -> String {
    let env = std::fs::read_to_string(lab.dir.join("lab.env")).unwrap();
    let url = env.lines().find_map(|l| l.strip_prefix("FERRY_LAB_PG_URL="));
    url.unwrap_or_else(|| panic!("lab.env has no FERRY_LAB_PG_URL:\n{env}")).to_string()
}

/// What the session's own connection is: user, TLS or not.
const WHO: &str = "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()";

#[test]
fn the_ferry_role_logs_in_over_tls_verified_against_the_lab_ca() {
    let lab = lab();
    let _pg = hold();
    let url = lab_env_url(&lab);
    let ca = lab.pg_ca();
    assert_eq!(url, lab.pg_url_with("ferry", Some(&lab.pg_password()), Some(&ca), "verify-full"));
    assert!(url.contains("sslmode=verify-full"), "{url}");
    assert_eq!(psql_ok(&url, WHO), "ferry|t");
    let version: u32 = psql_ok(&url, "show server_version_num").parse().unwrap();
    assert!(version >= 150000, "PostgreSQL 15 or later, not {version}");
    // The database ferry is the role's own: it may create its tables there.
    psql_ok(&url, "create table lab_probe (n int); drop table lab_probe");
    // The certificate names pg.ferry.lab too; another name fails verify-full.
    let named = |host: &str| {
        let conninfo = format!(
            "host={host} hostaddr=10.200.0.1 port=5432 user=ferry dbname=ferry sslmode=verify-full sslrootcert={}",
            ca.display()
        );
        psql_as(&conninfo, Some(&lab.pg_password()), WHO)
    };
    let out = named("pg.ferry.lab");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "ferry|t");
    let out = named("db.example.lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("does not match host name"), "{stderr}");
}

#[test]
fn a_wrong_password_is_refused() {
    let lab = lab();
    let _pg = hold();
    let url = lab.pg_url_with("ferry", Some("not-the-password"), Some(&lab.pg_ca()), "verify-full");
    let stderr = psql_refused(&url, "select 1");
    assert!(stderr.contains("password authentication failed for user \"ferry\""), "{stderr}");
    assert!(!stderr.contains(&lab.pg_password()), "{stderr}");
    // Without TLS the password is checked all the same.
    let url = lab.pg_url_with("ferry", Some("not-the-password"), None, "disable");
    let stderr = psql_refused(&url, "select 1");
    assert!(stderr.contains("password authentication failed for user \"ferry\""), "{stderr}");
}

#[test]
fn another_ca_fails_verify_full() {
    let lab = lab();
    let _pg = hold();
    let url = lab.pg_url_with("ferry", Some(&lab.pg_password()), Some(&lab.pg_other_ca()), "verify-full");
    let stderr = psql_refused(&url, "select 1");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    // So does verify-ca (the chain is checked, not the name) ...
    let url = lab.pg_url_with("ferry", Some(&lab.pg_password()), Some(&lab.pg_other_ca()), "verify-ca");
    assert!(psql_refused(&url, "select 1").contains("certificate verify failed"));
    // ... while `require` without a root certificate encrypts and checks nothing (libpq checks
    // the chain under `require` too when it is given a root certificate).
    let url = lab.pg_url_with("ferry", Some(&lab.pg_password()), None, "require");
    assert_eq!(psql_ok(&url, WHO), "ferry|t");
}

#[test]
fn sslmode_disable_logs_in_without_tls_and_the_server_listens_on_the_bridge_only() {
    let lab = lab();
    let _pg = hold();
    let url = lab.pg_url_with("ferry", Some(&lab.pg_password()), None, "disable");
    assert_eq!(psql_ok(&url, WHO), "ferry|f");
    assert_eq!(lab.psql("postgres", "show listen_addresses"), "10.200.0.1");
    assert_eq!(lab.psql("postgres", "show ssl"), "on");
    // The superuser only over the socket; everyone else by password from the lab's net.
    let rules = lab.psql(
        "postgres",
        "select type, database, user_name, coalesce(address, ''), coalesce(netmask, ''), auth_method \
         from pg_hba_file_rules order by line_number",
    );
    assert_eq!(
        rules,
        "local|{all}|{postgres}|||trust\n\
         hostssl|{all}|{all}|10.200.0.0|255.255.255.0|scram-sha-256\n\
         host|{all}|{all}|10.200.0.0|255.255.255.0|scram-sha-256"
    );
    // The superuser has a password, but the net does not let it in without one.
    let superuser = url.replace("postgres://ferry:", "postgres://postgres:");
    assert!(
        psql_refused(&superuser, "select 1").contains("password authentication failed for user \"postgres\"")
    );
}

#[test]
fn pg_db_gives_an_empty_database_owned_by_ferry() {
    let lab = lab();
    let _pg = hold();
    let url = lab.postgres_db("pglab_fresh");
    assert_eq!(
        url,
        lab.pg_url_with("pglab_fresh", Some(&lab.pg_password()), Some(&lab.pg_ca()), "verify-full")
    );
    psql_ok(&url, "create table runs (n int); insert into runs values (1), (2)");
    assert_eq!(lab.psql("pglab_fresh", "select count(*) from runs"), "2");
    // Again: dropped and made anew, so nothing of the first one is left.
    assert_eq!(lab.postgres_db("pglab_fresh"), url);
    let owner = "select pg_get_userbyid(datdba) from pg_database where datname = current_database()";
    assert_eq!(lab.psql("pglab_fresh", owner), "ferry");
    let tables = "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                  where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')";
    assert_eq!(lab.psql("pglab_fresh", tables), "0");
    assert_eq!(psql_ok(&url, WHO), "ferry|t");
}

#[test]
fn pg_stop_and_pg_start_keep_the_data() {
    let lab = lab();
    let _pg = hold();
    let url = lab.postgres_db("pglab_restart");
    psql_ok(&url, "create table kept (n int); insert into kept values (42)");
    lab.pg_stop();
    let _back = PostgresBack(&lab);
    let stderr = psql_refused(&url, "select 1");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    lab.pg_start();
    assert_eq!(psql_ok(&url, "select n from kept"), "42");
    assert_eq!(psql_ok(&url, WHO), "ferry|t");
}
