//! `[defaults] ssh_config` without the lab: where each SSH setting of a target came from
//! (`ferry vars`, `ferry plan`), refused directives by file and line (exit 2), reported ones
//! as warnings, and jump chains in the inventory. Nothing here connects: the commands used stop
//! before any connection or never make one.

use crate::test::Test;

/// The test inventory reading `ssh_config` beside it, `prod-2` written as the alias `web-2`
/// (without the defaults' `user`, so that ssh_config's `User` shows).
fn with_config(config: &str) -> Test {
    Test::new()
        .replace("ferry.toml", "user = \"deploy\"\n", "ssh_config = \"ssh_config\"\n")
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"web-2\"\nport = 2222")
        .write("ssh_config", config)
}

const CONFIG: &str = "# lab-free example\nHost web-*\n  HostName 10.0.1.12\n  User ops\n  Port 2200\n  \
                      IdentityFile ~/.ssh/web_%r\n  ProxyJump bastion\n  ConnectTimeout 7\n";

#[test]
fn vars_shows_each_ssh_setting_and_where_it_came_from() {
    with_config(CONFIG)
        .env("HOME", "/home/ana")
        .env("USER", "ana")
        .args(["vars", "web", "--env", "prod", "--target", "prod-2"])
        .stdout(
            "web in prod on prod-2\n\n\
             VARIABLE   VALUE    FROM\n\
             log_level  \"debug\"  defaults (ferry.toml:3)\n\
             port       9090     target prod-2 (ferry.toml:25), overrides app web (ferry.toml:35)\n\n\
             CONTAINER ENV  TEMPLATE\nLOG_LEVEL      {{ log_level }}\n\n\
             SECRET        VALUE  STATUS     SOURCE\nDATABASE_URL  ***    available  environment variable WEB_DATABASE_URL\n\n\
             SSH              VALUE                                      FROM\n\
             hostname         10.0.1.12                                  ssh_config:3\n\
             port             2222                                       ferry.toml:23\n\
             user             ops                                        ssh_config:4\n\
             identity         /home/ana/.ssh/web_ops (missing, skipped)  ssh_config:6\n\
             connect_timeout  7                                          ssh_config:8\n\
             known_hosts      ./known_hosts                              default\n\
             jump             bastion                                    ssh_config:7\n",
        )
        .run();
}

#[test]
fn vars_json_has_the_ssh_settings() {
    let out = with_config(CONFIG)
        .args(["vars", "web", "--env", "prod", "--target", "prod-2", "--output", "json"])
        .stdout_json()
        .run();
    let ssh = out.json()["ssh"].clone();
    assert_eq!(
        ssh[0],
        serde_json::json!({"setting": "hostname", "value": "10.0.1.12", "from": "ssh_config:3"})
    );
    assert_eq!(ssh[1], serde_json::json!({"setting": "port", "value": "2222", "from": "ferry.toml:23"}));
}

#[test]
fn a_proxy_command_is_refused_naming_its_file_and_line() {
    let error = "error: ssh_config:3: ProxyCommand is not supported by ferry (for target \"prod-2\")\n  \
                 = help: use ProxyJump (or the inventory's `jump`), or set ssh_config = \"none\" in [defaults]\n";
    with_config("Host web-2\n  User ops\n  ProxyCommand nc %h %p\n")
        .args(["vars", "web", "--env", "prod", "--target", "prod-2"])
        .code(2)
        .stderr(error)
        .run();
    with_config("Host web-2\n  User ops\n  ProxyCommand nc %h %p\n")
        .args(["check"])
        .code(2)
        .stderr(error)
        .run();
    // With ssh_config = "none" the file is not read at all.
    with_config("Host web-2\n  ProxyCommand nc %h %p\n")
        .replace("ferry.toml", "ssh_config = \"ssh_config\"", "ssh_config = \"none\"")
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .run();
}

#[test]
fn an_unsupported_match_criterion_is_refused_when_reached() {
    with_config("Match host web-2 exec \"test -f /x\"\n  User ops\n")
        .args(["check"])
        .code(2)
        .stderr(
            "error: ssh_config:1: Match exec is not supported by ferry (for target \"prod-2\")\n  \
             = help: use Host blocks or Match host/originalhost/user/localuser/all, or set ssh_config = \"none\" in [defaults]\n",
        )
        .run();
}

#[test]
fn strict_host_key_checking_no_is_a_warning_of_check() {
    with_config("Host *\n  StrictHostKeyChecking accept-new\n")
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 1 warning\n")
        .stderr(
            "warning: ssh_config:2: StrictHostKeyChecking accept-new: ignored, ferry always checks host keys strictly\n",
        )
        .run();
}

#[test]
fn plan_says_how_a_target_is_reached_when_ssh_config_decides_it() {
    with_config(CONFIG)
        .env("HOME", "/home/ana")
        .args(["plan", "web", "--env", "prod", "--version", "1.0"])
        .stdout_contains("ssh: prod-2 is ops@10.0.1.12:2222 via root@bastion:22 (ssh_config)\n")
        .stderr_contains("note: feed main cannot be asked")
        .run();
}

#[test]
fn a_jump_host_may_have_a_jump_host_but_not_in_a_circle() {
    Test::new()
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"10.0.1.12\"\njump = \"prod-1\"")
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"10.0.1.11\"\njump = \"stg-1\"")
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .run();
    let out = Test::new()
        .replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"10.0.1.12\"\njump = \"prod-1\"")
        .replace("ferry.toml", "host = \"10.0.1.11\"", "host = \"10.0.1.11\"\njump = \"prod-2\"")
        .args(["check"])
        .code(2)
        .stderr(
            "error: the jump hosts of target \"prod-1\" go round in a circle: prod-1 -> prod-2 -> prod-1\n  \
             --> ferry.toml:19:8\n   |\n19 | jump = \"prod-2\"\n   |        ^^^^^^^^\n\n\
             error: the jump hosts of target \"prod-2\" go round in a circle: prod-2 -> prod-1 -> prod-2\n  \
             --> ferry.toml:24:8\n   |\n24 | jump = \"prod-1\"\n   |        ^^^^^^^^\n",
        )
        .run();
    assert!(out.stderr.contains("go round in a circle: prod-1 -> prod-2 -> prod-1"), "{}", out.stderr);
}

#[test]
fn proxy_jump_follows_only_the_first_hops_own_proxy_jump_as_ssh_j_does() {
    with_config("Host web-*\n  ProxyJump a,ops@b:2022\nHost a\n  ProxyJump z\nHost b\n  ProxyJump ignored\n")
        .args(["plan", "web", "--env", "prod", "--version", "1.0"])
        .stdout_contains(
            "ssh: prod-2 is root@web-2:2222 via root@z:22 → root@a:22 → ops@b:2022 (ssh_config)\n",
        )
        .stderr_contains("note: feed main cannot be asked")
        .run();
}

#[test]
fn proxy_jump_hops_that_go_round_in_a_circle_are_refused() {
    with_config("Host web-*\n  ProxyJump a\nHost a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
        .args(["check"])
        .code(2)
        .stderr(
            "error: the jump hosts of target \"prod-2\" go round in a circle: prod-2 -> a -> b -> a\n  \
             = help: break the circle in the inventory's `jump` or ssh_config's ProxyJump\n",
        )
        .run();
}

#[test]
fn a_known_hosts_file_that_is_none_dev_null_or_no_file_is_refused_naming_its_line() {
    let help =
        "  = help: ferry needs a known_hosts file: set `known_hosts` in [defaults] or give a real file\n";
    for value in ["none", "/dev/null", "/tmp"] {
        with_config(&format!("Host web-2\n  User ops\n  UserKnownHostsFile {value}\n"))
            .args(["vars", "web", "--env", "prod", "--target", "prod-2"])
            .code(2)
            .stderr(&format!(
                "error: ssh_config:3: UserKnownHostsFile {value} is not a file ferry can use (for target \"prod-2\")\n{help}"
            ))
            .run();
    }
    // `known_hosts` in [defaults] wins over ssh_config, so the line is not used then.
    with_config("Host web-2\n  User ops\n  UserKnownHostsFile none\n")
        .replace(
            "ferry.toml",
            "ssh_config = \"ssh_config\"\n",
            "ssh_config = \"ssh_config\"\nknown_hosts = \"kh\"\n",
        )
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .run();
}

#[test]
fn several_known_hosts_files_are_refused_and_a_quoted_path_stays_one() {
    with_config("Host web-2\n  User ops\n  UserKnownHostsFile ~/.ssh/known_hosts ~/.ssh/known_hosts2\n")
        .args(["vars", "web", "--env", "prod", "--target", "prod-2"])
        .code(2)
        .stderr(
            "error: ssh_config:3: UserKnownHostsFile names 2 files; ferry reads only one (for target \"prod-2\")\n  \
             = help: name one file, or set `known_hosts` in [defaults]\n",
        )
        .run();
    let out = with_config("Host web-2\n  User ops\n  UserKnownHostsFile \"/tmp/my hosts\"\n")
        .args(["vars", "web", "--env", "prod", "--target", "prod-2", "--output", "json"])
        .stdout_json()
        .run();
    let ssh = out.json()["ssh"].clone();
    assert!(
        ssh.as_array().unwrap().contains(
            &serde_json::json!({"setting": "known_hosts", "value": "/tmp/my hosts", "from": "ssh_config:3"})
        ),
        "{ssh}"
    );
}

#[test]
fn a_proxy_command_after_proxy_jump_none_is_refused_not_skipped() {
    with_config("Host web-2\n  ProxyJump none\n  ProxyCommand nc %h %p\n")
        .args(["vars", "web", "--env", "prod", "--target", "prod-2"])
        .code(2)
        .stderr(
            "error: ssh_config:3: ProxyCommand is not supported by ferry (for target \"prod-2\")\n  \
             = help: use ProxyJump (or the inventory's `jump`), or set ssh_config = \"none\" in [defaults]\n",
        )
        .run();
}

#[test]
fn a_config_or_include_others_can_write_is_refused_as_ssh_does() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |test: &Test, file: &str, mode: u32| {
        std::fs::set_permissions(test.path().join(file), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let test = with_config("Host web-2\n  User ops\n");
    chmod(&test, "ssh_config", 0o666);
    test.args(["vars", "web", "--env", "prod", "--target", "prod-2"])
        .code(2)
        .stderr(
            "error: ssh_config: bad permissions: mode 666 is group- or world-writable\n  \
             = help: run `chmod go-w` on it (and own it), as ssh requires, or set ssh_config = \"none\" in [defaults]\n",
        )
        .run();
    let test = with_config("Include PLACEHOLDER\n").write("more.conf", "Host web-2\n  User ops\n");
    let included = test.path().join("more.conf").display().to_string();
    let test = test.replace("ssh_config", "PLACEHOLDER", &included);
    chmod(&test, "more.conf", 0o620);
    test.args(["check"])
        .code(2)
        .stderr_contains("bad permissions: mode 620 is group- or world-writable\n")
        .stderr_contains("more.conf")
        .run();
}

#[test]
fn environment_variables_in_paths_expand_and_an_unset_one_is_refused_by_its_line() {
    with_config("Host web-2\n  User ops\n  IdentityFile ${FX_UNSET_17}/key\n")
        .unset("FX_UNSET_17")
        .args(["vars", "web", "--env", "prod", "--target", "prod-2"])
        .code(2)
        .stderr(
            "error: ssh_config:3: environment variable ${FX_UNSET_17} is not set (for target \"prod-2\")\n  \
             = help: set it, or write the path out\n",
        )
        .run();
    let out = with_config(
        "Host web-2\n  User ops\n  UserKnownHostsFile ${FX_DIR_17}/kh\n  IdentityAgent $FX_UNSET_17\n",
    )
    .env("FX_DIR_17", "/tmp/fx dir")
    .unset("FX_UNSET_17")
    .args(["vars", "web", "--env", "prod", "--target", "prod-2", "--output", "json"])
    .stdout_json()
    .run();
    let ssh = out.json()["ssh"].clone();
    let rows = ssh.as_array().unwrap();
    assert!(
        rows.contains(
            &serde_json::json!({"setting": "known_hosts", "value": "/tmp/fx dir/kh", "from": "ssh_config:3"})
        ),
        "{ssh}"
    );
    assert!(
        rows.contains(&serde_json::json!({"setting": "identity_agent", "value": "$FX_UNSET_17 (unset: no agent)", "from": "ssh_config:4"})),
        "{ssh}"
    );
}

#[test]
fn a_missing_certificate_file_is_skipped_like_a_missing_identity_file() {
    let out = with_config("Host web-2\n  User ops\n  CertificateFile /nonexistent/fx-cert.pub\n")
        .args(["vars", "web", "--env", "prod", "--target", "prod-2", "--output", "json"])
        .stdout_json()
        .run();
    let ssh = out.json()["ssh"].clone();
    assert!(
        ssh.as_array().unwrap().contains(&serde_json::json!({
            "setting": "certificate_file", "value": "/nonexistent/fx-cert.pub (missing, skipped)", "from": "ssh_config:3"
        })),
        "{ssh}"
    );
}
