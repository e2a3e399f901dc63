//! Bad input: each case exits 2 with a message naming file, line and column (snapshotted), and
//! none of them reaches a target (these commands never connect anywhere).

use crate::test::Test;

/// Runs `args` on a broken fixture, expects exit 2 and nothing on stdout (a failed human run),
/// returns stderr for the caller to snapshot.
fn fails(test: Test, args: &[&str]) -> String {
    test.args(args.iter().copied()).code(2).stdout("").stderr_snapshot().run().stderr
}

fn check_fails(test: Test) -> String {
    fails(test, &["check"])
}

#[test]
fn toml_syntax_error() {
    let test = Test::new().replace("ferry.toml", "host = \"10.0.0.11\"", "host = \"10.0.0.11");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let test = Test::new().replace("ferry.toml", "host = \"10.0.1.12\"", "hots = \"10.0.1.12\"");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn unknown_environment_on_the_command_line() {
    insta::assert_snapshot!(fails(Test::new(), &["plan", "web", "--env", "prdo"]));
}

#[test]
fn unknown_environment_in_app_overrides() {
    let test = Test::new().replace(
        "ferry.toml",
        "health = {",
        "environments.stagign = { vars = { port = 1 } }\nhealth = {",
    );
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn unknown_app() {
    insta::assert_snapshot!(fails(Test::new(), &["plan", "wbe", "--env", "prod"]));
}

#[test]
fn undefined_template_variable() {
    let test = Test::new().replace("templates/web.j2", "-p {{ port }}", "-p {{ prot }}");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn undefined_variable_in_an_env_value_points_into_the_inventory() {
    let test = Test::new().replace("ferry.toml", "{{ log_level }}", "{{ loglevel }}");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn template_with_two_commands() {
    let test =
        Test::new().replace("templates/web.j2", "  {{ image }}\n", "  {{ image }}\ndocker run {{ image }}\n");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn template_with_a_shell_operator() {
    let test =
        Test::new().replace("templates/web.j2", "  {{ image }}\n", "  {{ image }} && curl evil.example\n");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn unquoted_safe_value_with_operator_is_located_at_the_expression() {
    let test = Test::new().replace("templates/web.j2", "-p {{ port }}", "-p {{ port|safe }}");
    insta::assert_snapshot!(fails(test, &["plan", "web", "--env", "prod", "--set", "port=80; reboot"]));
}

#[test]
fn template_name_escaping_the_folder() {
    let test = Test::new().write("secret.j2", "docker run {{ image }}").replace(
        "ferry.toml",
        "template = \"web.j2\"",
        "template = \"../secret.j2\"",
    );
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn absolute_template_path() {
    let test = Test::new().replace("ferry.toml", "template = \"web.j2\"", "template = \"/etc/passwd\"");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn missing_template_suggests_a_near_name() {
    let test = Test::new().replace("ferry.toml", "template = \"web.j2\"", "template = \"wbe.j2\"");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn missing_secret_source() {
    insta::assert_snapshot!(fails(Test::new().unset("WEB_DATABASE_URL"), &["plan", "web", "--env", "prod"]));
}

#[test]
fn missing_secret_is_a_warning_for_check() {
    let warning = "warning: secret DATABASE_URL: environment variable WEB_DATABASE_URL is not set \
                   (deploying web to staging, web to prod from here would fail)\n  --> ferry.toml:36:28\n   |\n\
                   36 | secrets = { DATABASE_URL = { env = \"WEB_DATABASE_URL\" } }\n   |                            \
                   ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  = help: export WEB_DATABASE_URL in the environment that runs \
                   ferry (CI secret, cron environment file)\n";
    Test::new()
        .unset("WEB_DATABASE_URL")
        .args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 1 warning\n")
        .stderr(warning)
        .run();
    Test::new()
        .unset("WEB_DATABASE_URL")
        .args(["check", "--deny-warnings"])
        .code(2)
        .stdout(
            "ferry.toml: failed (warnings denied): 1 app × 2 environments, 3 targets, 3 renders, 1 warning\n",
        )
        .stderr(warning)
        .run();
}

#[test]
fn missing_secret_file() {
    let test =
        Test::new().replace("ferry.toml", "{ env = \"WEB_DATABASE_URL\" }", "{ file = \"secrets/db\" }");
    let stderr = fails(test, &["plan", "web", "--env", "staging"]);
    assert!(stderr.contains("secret DATABASE_URL: cannot read"), "{stderr}");
    assert!(stderr.contains("--> ferry.toml:"), "{stderr}");
    insta::assert_snapshot!(stderr);
}

#[test]
fn secret_with_a_newline_is_refused_not_altered() {
    insta::assert_snapshot!(check_fails(Test::new().env("WEB_DATABASE_URL", "line1\nline2")));
}

#[test]
fn inline_secret_is_refused() {
    let test = Test::new().replace("ferry.toml", "{ env = \"WEB_DATABASE_URL\" }", "\"hunter2\"");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn target_glob_matching_nothing() {
    let test = Test::new().replace("ferry.toml", "targets = [\"stg-*\"]", "targets = [\"stag-*\"]");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn unknown_target_name_suggests() {
    let test = Test::new().replace(
        "ferry.toml",
        "targets = [\"prod-1\", \"prod-2\"]",
        "targets = [\"prod-1\", \"prod2\"]",
    );
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn duplicate_target_address_in_one_environment() {
    let test = Test::new().replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"10.0.1.11\"");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn same_address_in_different_environments_is_fine() {
    let test = Test::new().replace("ferry.toml", "host = \"10.0.0.11\"", "host = \"10.0.1.11\"");
    test.args(["check"])
        .stdout("ferry.toml: ok: 1 app × 2 environments, 3 targets, 3 renders, 0 warnings\n")
        .run();
}

#[test]
fn unknown_role_and_app_without_targets() {
    let test = Test::new().replace(
        "ferry.toml",
        "roles = [\"web\"]\nvars = { port = 8080 }",
        "roles = [\"wbe\"]\nvars = { port = 8080 }",
    );
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn lifecycle_phase_that_is_not_an_environment() {
    let test = Test::new().replace(
        "ferry.toml",
        "[environments.staging]",
        "[lifecycle]\nphases = [\"staging\", \"production\"]\n\n[environments.staging]",
    );
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn bad_duration_and_bad_port() {
    let test = Test::new().replace("ferry.toml", "timeout = \"30s\"", "timeout = \"30\"").replace(
        "ferry.toml",
        "host = \"10.0.1.12\"",
        "host = \"10.0.1.12\"\nport = 70000",
    );
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn image_with_a_tag_is_refused() {
    let test = Test::new().replace("ferry.toml", "image = \"acme/web\"", "image = \"acme/web:1.0\"");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn template_that_sets_the_container_name() {
    let test = Test::new().replace("templates/web.j2", "--restart", "--name mine --restart");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn template_running_another_image() {
    let test = Test::new().replace("templates/web.j2", "{{ image }}", "nginx:latest");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn template_syntax_error() {
    let test = Test::new().replace("templates/web.j2", "{% endfor %}", "{% endfr %}");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn limit_matching_nothing() {
    insta::assert_snapshot!(fails(Test::new(), &["plan", "web", "--env", "prod", "--limit", "prod-9"]));
}

#[test]
fn bad_set_argument() {
    insta::assert_snapshot!(fails(Test::new(), &["plan", "web", "--env", "prod", "--set", "no-equals"]));
}

#[test]
fn usage_error_is_exit_2() {
    let out = Test::new()
        .args(["plan", "web"])
        .code(2)
        .stderr(
            "error: the following required arguments were not provided:\n  --env <ENV>\n\n\
             Usage: ferry plan --env <ENV> <APP>\n\nFor more information, try '--help'.\n",
        )
        .run();
    assert!(out.stderr.contains("--env <ENV>"), "{}", out.stderr);
}

#[test]
fn several_problems_are_all_reported() {
    let test = Test::new().replace("ferry.toml", "targets = [\"stg-*\"]", "targets = [\"stag-*\"]").replace(
        "ferry.toml",
        "feed = \"main\"",
        "feed = \"mian\"",
    );
    let stderr = check_fails(test);
    assert!(stderr.contains("matches no target"), "{stderr}");
    assert!(stderr.contains("unknown feed \"mian\""), "{stderr}");
    assert!(stderr.contains("did you mean \"main\"?"), "{stderr}");
    insta::assert_snapshot!(stderr);
}

#[test]
fn json_errors_are_machine_readable() {
    let out = Test::new()
        .args(["plan", "web", "--env", "prdo", "--output", "json"])
        .code(2)
        .stdout_json()
        .stderr("error: unknown environment \"prdo\" in ferry.toml\n  = help: did you mean \"prod\"?\n")
        .run();
    let json = out.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["exit_code"], 2);
    assert_eq!(json["errors"][0]["help"], "did you mean \"prod\"?");
    assert_eq!(
        json,
        serde_json::json!({"type": "error", "exit_code": 2, "errors": [{"help": "did you mean \"prod\"?",
            "message": "unknown environment \"prdo\" in ferry.toml"}]})
    );
}

#[test]
fn missing_inventory() {
    let test = Test::new().args(["check", "-i", "nope.toml"]).code(2);
    let out = test.stderr("cannot read inventory nope.toml: No such file or directory (os error 2)\n").run();
    assert!(out.stderr.starts_with("cannot read inventory nope.toml:"), "{}", out.stderr);
}

#[test]
fn version_must_be_a_docker_tag() {
    insta::assert_snapshot!(fails(
        Test::new(),
        &["plan", "web", "--env", "prod", "--version", "1.0; rm -rf /"]
    ));
}

#[test]
fn set_cannot_override_reserved_names() {
    insta::assert_snapshot!(fails(
        Test::new(),
        &["plan", "web", "--env", "prod", "--set", "image=evil/image"]
    ));
}

#[test]
fn every_subcommand_has_help() {
    for command in ["check", "plan", "vars"] {
        Test::new().args([command, "--help"]).stdout_contains(&format!("Usage: ferry {command} ")).run();
    }
}

#[test]
fn symlink_out_of_the_templates_folder_is_refused() {
    let test = Test::new().write("outside.j2", "docker run {{ image }}\n");
    std::os::unix::fs::symlink("../outside.j2", test.path().join("templates/link.j2")).unwrap();
    let test = test.replace("ferry.toml", "template = \"web.j2\"", "template = \"link.j2\"");
    let stderr = check_fails(test);
    assert!(stderr.contains("error: template \"link.j2\" resolves outside the templates folder"), "{stderr}");
    insta::assert_snapshot!(stderr);
}

#[test]
fn unknown_jump_host() {
    let test =
        Test::new().replace("ferry.toml", "host = \"10.0.1.12\"", "host = \"10.0.1.12\"\njump = \"prod-3\"");
    insta::assert_snapshot!(check_fails(test));
}

#[test]
fn a_set_value_that_would_become_a_docker_option_is_refused_naming_the_variable() {
    let test = Test::new()
        .replace("templates/web.j2", "  {{ image }}\n", "  {{ extra }}\n  {{ image }}\n")
        .replace("ferry.toml", "vars = { port = 8080 }", "vars = { port = 8080, extra = \"--init\" }");
    let stderr = fails(test, &["plan", "web", "--env", "prod", "--set", "extra=--privileged"]);
    assert!(
        stderr.contains("the value of `extra` starts a word with `-` where docker reads an option"),
        "{stderr}"
    );
    insta::assert_snapshot!(stderr);
}

#[test]
fn a_value_starting_with_a_dash_is_fine_where_docker_reads_a_flags_value_or_the_container_command() {
    let test = Test::new()
        .replace(
            "templates/web.j2",
            "  {{ image }}\n",
            "  --label app.note={{ note }} -e NOTE {{ image }} echo {{ note }}\n",
        )
        .replace("ferry.toml", "vars = { port = 8080 }", "vars = { port = 8080, note = \"x\" }")
        .replace("ferry.toml", "feed = \"main\"\n", "");
    test.args(["plan", "web", "--env", "prod", "--set", "note=-x"])
        .stdout_contains("--label app.note=-x -e NOTE")
        .stdout_contains("echo -x")
        .stderr("note: app web has no feed: planned the tag \"latest\" (deploy needs --version TAG)\n")
        .run();
}

/// `--archive` is read on the runner before any target is reached: an archive that is not one,
/// is missing, or holds two images, and `--version latest` (a feed lookup) with it, are bad
/// input; none of them connects anywhere.
#[test]
fn a_bad_archive_is_bad_input_before_any_connection() {
    let test = Test::new().write("junk.tar", "not a tar");
    let junk = fails(test, &["deploy", "web", "--env", "staging", "--archive", "junk.tar", "--yes"]);
    assert_eq!(
        junk,
        "error: --archive junk.tar: not a readable tar file: failed to read entire block\n  \
         = help: give a file made by `docker save` (or `skopeo copy … docker-archive:FILE`) holding one image\n"
    );
    let missing =
        fails(Test::new(), &["deploy", "web", "--env", "staging", "--archive", "none.tar", "--yes"]);
    assert!(missing.starts_with("error: --archive none.tar: cannot open it: "), "{missing}");
}

/// A `docker save` archive (legacy layout) of `images` copies of one small image.
fn save_archive(images: usize) -> Vec<u8> {
    use sha2::Digest;
    let config = br#"{"architecture":"amd64","os":"linux","config":{}}"#;
    let hex: String = sha2::Sha256::digest(config).iter().map(|b| format!("{b:02x}")).collect();
    let one = format!(r#"{{"Config":"{hex}.json","RepoTags":["acme/web:1.0"],"Layers":[]}}"#);
    let manifest = format!("[{}]", vec![one; images].join(","));
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in
        [(format!("{hex}.json"), config.to_vec()), ("manifest.json".into(), manifest.into_bytes())]
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn an_archive_of_two_images_or_with_version_latest_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("two.tar"), save_archive(2)).unwrap();
    std::fs::write(dir.path().join("one.tar"), save_archive(1)).unwrap();
    let two = dir.path().join("two.tar").display().to_string();
    let one = dir.path().join("one.tar").display().to_string();
    let stderr = fails(Test::new(), &["deploy", "web", "--env", "staging", "--archive", &two, "--yes"]);
    assert!(
        stderr.contains("two.tar: manifest.json lists 2 images; ferry deploys an archive of exactly one\n"),
        "{stderr}"
    );
    let args = ["deploy", "web", "--env", "staging", "--archive", &one, "--version", "latest", "--yes"];
    assert_eq!(
        fails(Test::new(), &args),
        "error: --version latest asks the feed, and --archive asks no registry\n  \
         = help: give the tag to record with --version TAG, or leave it out to use the archive's\n"
    );
}
