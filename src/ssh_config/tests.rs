//! The resolver against OpenSSH itself: each case's expected values were printed by
//! `ssh -G -F FILE ALIAS` (OpenSSH 9.2p1, local user root, `~/.ssh/conf.d/a.conf` as in
//! [`INCLUDED`]) and are kept as literals, so that these tests need no `ssh` binary.

use super::*;

/// The file the `include` cases' `Include conf.d/*.conf` finds.
const INCLUDED: &str = "Host inc1\n  HostName included.example\n  Port 2022\n";

/// One configuration, the alias looked up, and what `ssh -G` printed.
struct Case {
    name: &'static str,
    alias: &'static str,
    config: &'static str,
    hostname: &'static str,
    user: &'static str,
    port: u16,
    identities: &'static [&'static str],
    proxyjump: Option<&'static str>,
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { name: "plain", alias: "web", config: "Host web\n  HostName 10.0.0.1\n  User alice\n  Port 2200\n  IdentityFile ~/.ssh/web_key\n", hostname: "10.0.0.1", user: "alice", port: 2200, identities: &["~/.ssh/web_key"], proxyjump: None },
    Case { name: "first_wins", alias: "web", config: "Host web\n  User first\nHost *\n  User second\n  Port 2222\n  HostName fallback.example\n", hostname: "fallback.example", user: "first", port: 2222, identities: &[], proxyjump: None },
    Case { name: "star_first", alias: "web", config: "Host *\n  User star\nHost web\n  User web\n  HostName web.example\n", hostname: "web.example", user: "star", port: 22, identities: &[], proxyjump: None },
    Case { name: "global_before_host", alias: "db", config: "Port 2020\nHost db\n  Port 3030\n  HostName db.internal\n", hostname: "db.internal", user: "root", port: 2020, identities: &[], proxyjump: None },
    Case { name: "negation", alias: "web-prod", config: "Host web-* !web-prod\n  User nonprod\nHost *\n  User everyone\n", hostname: "web-prod", user: "everyone", port: 22, identities: &[], proxyjump: None },
    Case { name: "negation_other", alias: "web-test", config: "Host web-* !web-prod\n  User nonprod\nHost *\n  User everyone\n", hostname: "web-test", user: "nonprod", port: 22, identities: &[], proxyjump: None },
    Case { name: "question", alias: "h7", config: "Host h?\n  HostName 10.1.1.%h\n", hostname: "10.1.1.h7", user: "root", port: 22, identities: &[], proxyjump: None },
    Case { name: "percent_h", alias: "app", config: "Host app\n  HostName %h.example.com\n", hostname: "app.example.com", user: "root", port: 22, identities: &[], proxyjump: None },
    Case { name: "equals", alias: "app", config: "Host=app\n  HostName=app.example\n  User = bob\n  Port= 2022\n", hostname: "app.example", user: "bob", port: 2022, identities: &[], proxyjump: None },
    Case { name: "quoted", alias: "app", config: "Host \"app\"\n  IdentityFile \"~/.ssh/my key\"\n  User \"carol\"\n", hostname: "app", user: "carol", port: 22, identities: &["~/.ssh/my key"], proxyjump: None },
    Case { name: "identities_accumulate", alias: "app", config: "Host app\n  IdentityFile ~/.ssh/one\nHost *\n  IdentityFile ~/.ssh/two\n  IdentityFile ~/.ssh/three\n", hostname: "app", user: "root", port: 22, identities: &["~/.ssh/one", "~/.ssh/two", "~/.ssh/three"], proxyjump: None },
    Case { name: "identity_tokens", alias: "app", config: "Host app\n  HostName app.example\n  Port 2201\n  User dave\n  IdentityFile ~/.ssh/%h_%p_%r\n", hostname: "app.example", user: "dave", port: 2201, identities: &["~/.ssh/%h_%p_%r"], proxyjump: None },
    Case { name: "proxyjump_two", alias: "app", config: "Host app\n  HostName 127.0.0.1\n  ProxyJump hop1,hop2\n", hostname: "127.0.0.1", user: "root", port: 22, identities: &[], proxyjump: Some("hop1,hop2") },
    Case { name: "proxyjump_user_port", alias: "app", config: "Host app\n  ProxyJump eve@bastion.example:2222\n", hostname: "app", user: "root", port: 22, identities: &[], proxyjump: Some("eve@bastion.example:2222") },
    Case { name: "proxyjump_first", alias: "app", config: "Host app\n  ProxyJump first\nHost *\n  ProxyJump second\n", hostname: "app", user: "root", port: 22, identities: &[], proxyjump: Some("first") },
    Case { name: "proxyjump_none", alias: "app", config: "Host app\n  ProxyJump none\nHost *\n  ProxyJump fallback\n", hostname: "app", user: "root", port: 22, identities: &[], proxyjump: None },
    Case { name: "match_all", alias: "app", config: "Match all\n  User matched\n", hostname: "app", user: "matched", port: 22, identities: &[], proxyjump: None },
    Case { name: "match_host", alias: "app", config: "Host app\n  HostName real.example\nMatch host real.example\n  User by-hostname\n", hostname: "real.example", user: "by-hostname", port: 22, identities: &[], proxyjump: None },
    Case { name: "match_originalhost", alias: "app", config: "Host app\n  HostName real.example\nMatch originalhost app\n  User by-alias\nHost *\n  User default\n", hostname: "real.example", user: "by-alias", port: 22, identities: &[], proxyjump: None },
    Case { name: "match_host_negated", alias: "app", config: "Match !host app\n  User not-app\nMatch all\n  User fallback\n", hostname: "app", user: "fallback", port: 22, identities: &[], proxyjump: None },
    Case { name: "match_user", alias: "app", config: "Host app\n  User admin\nMatch user admin\n  Port 2002\n", hostname: "app", user: "admin", port: 2002, identities: &[], proxyjump: None },
    Case { name: "match_localuser", alias: "app", config: "Match localuser root\n  User from-root\n", hostname: "app", user: "from-root", port: 22, identities: &[], proxyjump: None },
    Case { name: "match_list", alias: "app", config: "Match host other,app\n  Port 4444\n", hostname: "app", user: "root", port: 4444, identities: &[], proxyjump: None },
    Case { name: "include", alias: "app", config: "Include conf.d/*.conf\nHost app\n  User included-before\n", hostname: "app", user: "included-before", port: 22, identities: &[], proxyjump: None },
    Case { name: "include_target", alias: "inc1", config: "Include conf.d/*.conf\nHost *\n  Port 9999\n", hostname: "included.example", user: "root", port: 2022, identities: &[], proxyjump: None },
    Case { name: "case_keyword", alias: "app", config: "HOST app\n  HOSTNAME upper.example\n  uSeR mixed\n", hostname: "upper.example", user: "mixed", port: 22, identities: &[], proxyjump: None },
    Case { name: "comments", alias: "app", config: "# a comment\nHost app # trailing\n  User commented\n  Port 2323\n", hostname: "app", user: "commented", port: 2323, identities: &[], proxyjump: None },
    Case { name: "tabs", alias: "app", config: "Host\tapp\n\tHostName\ttabbed.example\n\tUser\ttab\n", hostname: "tabbed.example", user: "tab", port: 22, identities: &[], proxyjump: None },
    Case { name: "multiple_patterns", alias: "beta", config: "Host alpha beta gamma\n  HostName greek.example\n", hostname: "greek.example", user: "root", port: 22, identities: &[], proxyjump: None },
    Case { name: "no_match", alias: "zzz", config: "Host app\n  User app\n", hostname: "zzz", user: "root", port: 22, identities: &[], proxyjump: None },
];

fn home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh/conf.d")).unwrap();
    std::fs::write(home.path().join(".ssh/conf.d/a.conf"), INCLUDED).unwrap();
    home
}

fn resolve(config: &str, alias: &str, home: &Path) -> Result<Resolved, ConfigError> {
    let parsed = SshConfig::parse("config", config, Some(home))?;
    parsed.resolve(&Query { alias, user: None, local_user: "root" })
}

#[test]
fn resolution_matches_what_ssh_g_printed_for_each_case() {
    let home = home();
    for case in CASES {
        let r =
            resolve(case.config, case.alias, home.path()).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let hostname =
            r.get("hostname").map_or(case.alias.to_string(), |h| expand_hostname(&h.value, case.alias));
        assert_eq!(hostname, case.hostname, "{}: hostname", case.name);
        assert_eq!(r.get("user").map_or("root", |u| u.value.as_str()), case.user, "{}: user", case.name);
        let port = r.get("port").map_or(22, |p| p.value.parse::<u16>().unwrap());
        assert_eq!(port, case.port, "{}: port", case.name);
        let ids: Vec<&str> = r.identity_files.iter().map(|s| s.value.as_str()).collect();
        assert_eq!(ids, case.identities, "{}: identityfile", case.name);
        let jump = r.get("proxyjump").map(|s| s.value.as_str()).filter(|v| !v.eq_ignore_ascii_case("none"));
        assert_eq!(jump, case.proxyjump, "{}: proxyjump", case.name);
    }
}

#[test]
fn each_value_keeps_its_file_and_line() {
    let home = home();
    let r = resolve("Port 2020\nHost db\n  Port 3030\n  HostName db.internal\n", "db", home.path()).unwrap();
    assert_eq!(r.get("port").unwrap().at.to_string(), "config:1");
    assert_eq!(r.get("hostname").unwrap().at.to_string(), "config:4");
    let r = resolve("Include conf.d/*.conf\n", "inc1", home.path()).unwrap();
    assert_eq!(r.get("hostname").unwrap().at.to_string(), "~/.ssh/conf.d/a.conf:2");
}

#[test]
fn proxy_command_is_refused_by_its_line_unless_proxy_jump_came_first() {
    let home = home();
    let e = resolve("Host app\n  User x\n  ProxyCommand nc %h %p\n", "app", home.path()).unwrap_err();
    assert_eq!(e.to_string(), "config:3: ProxyCommand is not supported by ferry");
    assert!(resolve("Host app\n  ProxyJump hop\n  ProxyCommand nc %h %p\n", "app", home.path()).is_ok());
    assert!(resolve("Host app\n  ProxyCommand none\n", "app", home.path()).is_ok());
    assert!(resolve("Host other\n  ProxyCommand nc %h %p\n", "app", home.path()).is_ok());
}

#[test]
fn revocation_lists_and_canonicalization_are_refused() {
    let home = home();
    let e = resolve("RevokedHostKeys ~/.ssh/krl\n", "app", home.path()).unwrap_err();
    assert_eq!(e.at.unwrap().line, 1);
    let e = resolve("\nCanonicalizeHostname yes\n", "app", home.path()).unwrap_err();
    assert_eq!(e.at.unwrap().line, 2);
    assert!(resolve("CanonicalizeHostname no\n", "app", home.path()).is_ok());
}

#[test]
fn unsupported_match_criteria_fail_only_when_reached() {
    let home = home();
    let e = resolve("Match host app exec \"true\"\n  User x\n", "app", home.path()).unwrap_err();
    assert_eq!(e.to_string(), "config:1: Match exec is not supported by ferry");
    // `host other` is false: `exec` is never reached, as in OpenSSH.
    assert!(resolve("Match host other exec \"true\"\n  User x\n", "app", home.path()).is_ok());
}

#[test]
fn security_directives_are_reported_not_applied() {
    let home = home();
    let r =
        resolve("Host app\n  StrictHostKeyChecking no\n  ForwardAgent yes\n", "app", home.path()).unwrap();
    let messages: Vec<String> = r.reported.iter().map(|r| format!("{}: {}", r.at, r.message)).collect();
    assert_eq!(
        messages,
        [
            "config:3: ForwardAgent yes: ignored, ferry never forwards the agent",
            "config:2: StrictHostKeyChecking no: ignored, ferry always checks host keys strictly",
        ]
    );
    assert!(resolve("StrictHostKeyChecking yes\n", "app", home.path()).unwrap().reported.is_empty());
    // `false` is OpenSSH's other spelling of `no`.
    let r = resolve("StrictHostKeyChecking false\n", "app", home.path()).unwrap();
    assert_eq!(r.reported.len(), 1, "{:?}", r.reported);
    assert!(r.reported[0].message.starts_with("StrictHostKeyChecking false: ignored"));
}

#[test]
fn includes_nest_no_deeper_than_sixteen_files() {
    let home = home();
    std::fs::write(home.path().join(".ssh/loop"), "Include loop\n").unwrap();
    let e = resolve("Include loop\n", "app", home.path()).unwrap_err();
    assert!(e.message.contains("deeper than 16"), "{e}");
}

#[test]
fn a_missing_file_is_an_empty_configuration() {
    let home = home();
    let config = SshConfig::load(&home.path().join(".ssh/config"), Some(home.path())).unwrap();
    let r = config.resolve(&Query { alias: "x", user: None, local_user: "root" }).unwrap();
    assert!(r.values.is_empty());
}

#[test]
fn tokens_expand_in_file_names() {
    let home = home();
    let setting = Setting { value: "~/.ssh/%h_%p_%r_%%".into(), at: Origin { file: "c".into(), line: 1 } };
    let path =
        expand_path(&setting, &[('h', "app.example"), ('p', "2201"), ('r', "dave")], Some(home.path()))
            .unwrap();
    assert_eq!(path, home.path().join(".ssh/app.example_2201_dave_%"));
    let bad = Setting { value: "%Z".into(), at: Origin { file: "c".into(), line: 7 } };
    assert_eq!(expand_path(&bad, &[], None).unwrap_err().to_string(), "c:7: unknown token %Z");
}

#[test]
fn proxy_jump_hops_parse() {
    assert_eq!(
        parse_jumps("a,eve@b:2222,ssh://c,[::1]:23").unwrap(),
        vec![
            Hop { user: None, host: "a".into(), port: None },
            Hop { user: Some("eve".into()), host: "b".into(), port: Some(2222) },
            Hop { user: None, host: "c".into(), port: None },
            Hop { user: None, host: "::1".into(), port: Some(23) },
        ]
    );
    assert_eq!(parse_jumps("none").unwrap(), vec![]);
    assert!(parse_jumps("a:notaport").is_err());
    assert!(parse_jumps("a,,b").is_err());
}

/// What `ssh -G -F FILE ALIAS` (OpenSSH 9) printed: `Host` matches the alias as typed, case
/// and all; `Match host`/`originalhost` ignore case on both sides.
#[test]
fn host_is_case_sensitive_and_match_host_is_not_as_ssh_g_printed() {
    let home = home();
    let user = |config: &str, alias: &str| {
        resolve(config, alias, home.path()).unwrap().get("user").map(|u| u.value.clone())
    };
    let port = |config: &str, alias: &str| {
        resolve(config, alias, home.path()).unwrap().get("port").map(|p| p.value.clone())
    };
    let hosts = "Host Web\n  User capital\nHost web\n  User lower\n";
    assert_eq!(user(hosts, "Web").as_deref(), Some("capital"));
    assert_eq!(user(hosts, "web").as_deref(), Some("lower"));
    assert_eq!(user(hosts, "WEB"), None);
    let original = "Match originalhost WEB2\n  Port 2345\n";
    assert_eq!(port(original, "web2").as_deref(), Some("2345"));
    assert_eq!(port(original, "WEB2").as_deref(), Some("2345"));
    let host = "Match host APP\n  Port 2346\n";
    assert_eq!(port(host, "App").as_deref(), Some("2346"));
    assert_eq!(port(host, "app").as_deref(), Some("2346"));
}
