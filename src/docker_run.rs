//! What a rendered `docker run` may contain.
//!
//! ferry runs exactly one `docker run` per app and target, and owns part of it: the container's
//! name, detached mode, the `ferry.*` labels (status, drift and rollback read them) and the
//! image, which it pins to the version being deployed. This module reads the split words the
//! way the docker CLI does (which flags take a value, where the image is) and refuses a template
//! that would take any of those over.

use crate::shell;

/// Why a rendered command is refused: (output offset, message, help).
pub type Refusal = (usize, String, Option<String>);

/// Long `docker run` flags that take no value; every other long flag takes one.
const BOOLEAN_LONG_FLAGS: &[&str] = &[
    "--detach",
    "--disable-content-trust",
    "--help",
    "--init",
    "--interactive",
    "--no-healthcheck",
    "--oom-kill-disable",
    "--privileged",
    "--publish-all",
    "--quiet",
    "--read-only",
    "--rm",
    "--sig-proxy",
    "--tty",
    "--use-api-socket",
];

/// Short `docker run` flags that take no value.
const BOOLEAN_SHORT_FLAGS: &[char] = &['d', 'i', 't', 'P', 'q'];

/// Checks that `words` are one acceptable `docker run` of `image`; returns the words after
/// `run`. An error is (output offset, message, help). `proxied`: the app sits behind the proxy,
/// so the template may neither publish ports nor choose networks (ferry does).
pub fn check(
    words: &[shell::Word],
    image: &str,
    managed: &Managed<'_>,
) -> Result<Vec<String>, (usize, String, Option<String>)> {
    check_with_options(words, image, managed).map(|(args, _)| args)
}

/// What ferry adds to an app's `docker run` besides its name, labels and image, so that the
/// template may not also say it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Managed<'a> {
    /// The app sits behind the proxy: no published ports, no network of its own.
    pub proxied: bool,
    /// The app has `networks`: ferry attaches the container to them, the template names none.
    pub networks: bool,
    /// The app's `volumes`: the template mounts nothing else at their paths.
    pub volumes: &'a [crate::netvol::Volume],
}

/// The refusal of a flag that the app's `networks` or `volumes` take over, if `flag` (with its
/// value) is one.
fn netvol_refusal(managed: &Managed<'_>, flag: &str, value: Option<&str>) -> Option<(String, String)> {
    if managed.networks && matches!(flag, "--network" | "--net") {
        return Some((
            format!(
                "the app has `networks`, so ferry attaches the container to them; this template also chooses a network ({flag})"
            ),
            format!("remove {flag} from the template, or list the network in the app's `networks`"),
        ));
    }
    let value = value?;
    let target = match flag {
        "-v" | "--volume" => {
            let mut parts = value.split(':');
            let first = parts.next().unwrap_or_default();
            parts.next().unwrap_or(first)
        }
        "--tmpfs" => value.split(':').next().unwrap_or_default(),
        "--mount" => value
            .split(',')
            .find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                matches!(k.trim(), "target" | "dst" | "destination").then_some(v)
            })
            .unwrap_or_default(),
        _ => return None,
    };
    let volume = managed.volumes.iter().find(|v| crate::netvol::same_path(&v.path, target))?;
    Some((
        format!("this template also mounts {target}, where the app's volume `{}` goes ({flag})", volume.name),
        format!("remove the template's {flag} {value}, or the volume from the app's `volumes`"),
    ))
}

/// The refusal of a flag that an app behind the proxy must not have, if `flag` is one.
fn proxied_refusal(flag: &str) -> Option<(String, String)> {
    let (what, help) = match flag {
        "-p" | "--publish" | "-P" | "--publish-all" => (
            "publishes a port",
            format!(
                "remove {flag}: the proxy reaches the container's port (proxy.port) on the ferry network"
            ),
        ),
        "--network" | "--net" | "--network-alias" => (
            "chooses a network",
            format!(
                "remove {flag}: ferry puts the container on its `ferry` network with an alias per deployment"
            ),
        ),
        _ => return None,
    };
    Some((format!("an app behind the proxy is reached through it; this template {what} ({flag})"), help))
}

/// [`check`], also returning the output offsets of the words docker reads as options (flags
/// before the image, not their values), so that a caller can refuse one that a value made.
pub fn check_with_options(
    words: &[shell::Word],
    image: &str,
    managed: &Managed<'_>,
) -> Result<(Vec<String>, Vec<usize>), Refusal> {
    let first = words.first().map_or(0, |w| w.offset);
    let start = match words {
        [d, r, ..] if d.text == "docker" && r.text == "run" => 2,
        [d, c, r, ..] if d.text == "docker" && c.text == "container" && r.text == "run" => 3,
        _ => {
            return Err((
                first,
                "a template must be one `docker run` command".into(),
                Some("start the template with `docker run`".into()),
            ));
        }
    };
    if let Some(second) = words[start..].iter().find(|w| w.starts_line && w.text == "docker") {
        return Err((
            second.offset,
            "a second command: a template must be exactly one `docker run`".into(),
            Some(
                "ferry runs one container per app; put other steps into another app or a post-deploy step"
                    .into(),
            ),
        ));
    }
    let args = &words[start..];
    let mut options = Vec::new();
    let image_at = find_image(args, &mut options, managed)?;
    match image_at {
        Some(i) if args[i].text == image => Ok((
            args.iter().map(|w| w.text.clone()).collect(),
            options.iter().map(|&o| args[o].offset).collect(),
        )),
        Some(i) => Err((
            args[i].offset,
            format!("the template runs image \"{}\", not the one ferry deploys", args[i].text),
            Some("use {{ image }} as the image: ferry pins it to the version being deployed".into()),
        )),
        None => Err((
            words.last().map_or(first, |w| w.offset),
            "the template names no image".into(),
            Some("put {{ image }} after the docker run options".into()),
        )),
    }
}

/// Finds the image (the first non-option argument), refusing the flags ferry manages; the
/// indices of the words read as options (`--` included) are pushed to `options`.
fn find_image(
    args: &[shell::Word],
    options: &mut Vec<usize>,
    managed: &Managed<'_>,
) -> Result<Option<usize>, (usize, String, Option<String>)> {
    let proxied = managed.proxied;
    let mut i = 0;
    while i < args.len() {
        let word = &args[i];
        let text = word.text.as_str();
        if text.starts_with('-') && text != "-" {
            options.push(i);
        }
        let refuse =
            |message: &str, help: &str| Err((word.offset, message.to_string(), Some(help.to_string())));
        if text == "--" || !text.starts_with('-') || text == "-" {
            return Ok(Some(if text == "--" { i + 1 } else { i }).filter(|&j| j < args.len()));
        }
        let (flag, inline_value) = match text.split_once('=') {
            Some((f, v)) if text.starts_with("--") => (f, Some(v)),
            _ => (text, None),
        };
        let value = |next: Option<&shell::Word>| {
            inline_value.map(str::to_string).or_else(|| next.map(|w| w.text.clone()))
        };
        if flag.starts_with("--") {
            if let Some((message, help)) = proxied.then(|| proxied_refusal(flag)).flatten() {
                return refuse(&message, &help);
            }
            if let Some((message, help)) = netvol_refusal(managed, flag, value(args.get(i + 1)).as_deref()) {
                return refuse(&message, &help);
            }
            match flag {
                "--name" => {
                    return refuse(
                        "ferry names the container itself",
                        "remove --name; set `container_name` on the app to change the name",
                    );
                }
                "--detach" => return refuse("ferry always starts the container detached", "remove --detach"),
                "--rm" => {
                    return refuse(
                        "--rm would delete the old container ferry keeps to restore on failure",
                        "remove --rm",
                    );
                }
                "--label" if value(args.get(i + 1)).is_some_and(|v| v.starts_with("ferry.")) => {
                    return refuse("`ferry.*` labels are set by ferry", "use another label prefix");
                }
                _ => {}
            }
            i += if inline_value.is_some() || BOOLEAN_LONG_FLAGS.contains(&flag) { 1 } else { 2 };
            continue;
        }
        // A cluster of short flags such as -it, or -p8080:80.
        let mut consumed = 1;
        for (at, c) in flag[1..].char_indices() {
            if let Some((message, help)) = proxied.then(|| proxied_refusal(&format!("-{c}"))).flatten() {
                return refuse(&message, &help);
            }
            if c == 'd' {
                return refuse("ferry always starts the container detached", "remove -d");
            }
            if BOOLEAN_SHORT_FLAGS.contains(&c) {
                continue;
            }
            let attached = &flag[1 + at + c.len_utf8()..];
            let value = if attached.is_empty() {
                args.get(i + 1).map(|w| w.text.clone())
            } else {
                Some(attached.to_string())
            };
            if c == 'l' && value.as_deref().is_some_and(|v| v.starts_with("ferry.")) {
                return refuse("`ferry.*` labels are set by ferry", "use another label prefix");
            }
            if let Some((message, help)) = netvol_refusal(managed, &format!("-{c}"), value.as_deref()) {
                return refuse(&message, &help);
            }
            if attached.is_empty() {
                consumed = 2;
            }
            break;
        }
        i += consumed;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<Vec<String>, String> {
        let words = shell::split(text).map_err(|e| e.message)?;
        check(&words, "img:1", &Managed::default()).map_err(|e| e.1)
    }

    #[test]
    fn an_app_behind_the_proxy_publishes_nothing_and_chooses_no_network() {
        for bad in [
            "docker run -p 80:80 img:1",
            "docker run -p8080:80 img:1",
            "docker run -itp 80:80 img:1",
            "docker run --publish=80:80 img:1",
            "docker run --publish 80:80 img:1",
            "docker run -P img:1",
            "docker run --publish-all img:1",
            "docker run --network host img:1",
            "docker run --net=bridge img:1",
            "docker run --network-alias x img:1",
        ] {
            let words = shell::split(bad).unwrap();
            let err = check(&words, "img:1", &Managed { proxied: true, ..Managed::default() })
                .err()
                .map(|e| e.1)
                .unwrap_or_default();
            assert!(err.contains("an app behind the proxy is reached through it"), "{bad}: {err}");
            assert!(check(&words, "img:1", &Managed::default()).is_ok(), "{bad} is fine without a proxy");
        }
        let words = shell::split("docker run -e P=1 --init img:1 -p 80").unwrap();
        assert!(
            check(&words, "img:1", &Managed { proxied: true, ..Managed::default() }).is_ok(),
            "flags after the image belong to the container"
        );
    }

    #[test]
    fn an_app_with_networks_or_volumes_keeps_the_template_off_them() {
        let volumes = [crate::netvol::Volume { name: "data".into(), path: "/data".into() }];
        let managed = Managed { networks: true, volumes: &volumes, ..Managed::default() };
        for (bad, needle) in [
            ("docker run --network host img:1", "chooses a network (--network)"),
            ("docker run --net=bridge img:1", "chooses a network (--net)"),
            ("docker run -v other:/data img:1", "mounts /data, where the app's volume `data` goes (-v)"),
            ("docker run -v /data/ img:1", "mounts /data/"),
            ("docker run --volume=/srv:/data:ro img:1", "(--volume)"),
            ("docker run -itv x:/data img:1", "(-v)"),
            ("docker run --mount type=bind,src=/srv,dst=/data img:1", "(--mount)"),
            ("docker run --tmpfs /data:size=1m img:1", "(--tmpfs)"),
        ] {
            let words = shell::split(bad).unwrap();
            let err = check(&words, "img:1", &managed).err().map(|e| e.1).unwrap_or_default();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(check(&words, "img:1", &Managed::default()).is_ok(), "{bad} is fine without the keys");
        }
        let fine =
            shell::split("docker run -v logs:/logs --mount type=volume,target=/cache img:1 -v x:/data")
                .unwrap();
        assert!(check(&fine, "img:1", &managed).is_ok(), "other paths, and words after the image");
        let only_volumes = Managed { volumes: &volumes, ..Managed::default() };
        assert!(
            check(&shell::split("docker run --network host img:1").unwrap(), "img:1", &only_volumes).is_ok()
        );
    }

    #[test]
    fn accepts_one_docker_run_and_finds_the_image() {
        assert_eq!(
            check_text("docker run -p 80:80 -e A=b --init img:1 sh -c x"),
            Ok(vec![
                "-p".into(),
                "80:80".into(),
                "-e".into(),
                "A=b".into(),
                "--init".into(),
                "img:1".into(),
                "sh".into(),
                "-c".into(),
                "x".into()
            ])
        );
        assert!(check_text("docker container run -it --network=host img:1").is_ok());
        assert!(
            check_text("docker run -p8080:80 img:1 --name x -d").is_ok(),
            "flags after the image belong to the container"
        );
    }

    #[test]
    fn refuses_managed_flags_other_images_and_second_commands() {
        for (bad, needle) in [
            ("docker run --name x img:1", "names the container"),
            ("docker run -d img:1", "detached"),
            ("docker run -dit img:1", "detached"),
            ("docker run --rm img:1", "--rm"),
            ("docker run --label ferry.app=x img:1", "ferry.*"),
            ("docker run -l ferry.app=x img:1", "ferry.*"),
            ("docker run other:2", "not the one"),
            ("docker run -p 80:80", "no image"),
            ("docker ps", "one `docker run`"),
            ("docker run img:1\ndocker run img:1", "second command"),
        ] {
            let err = check_text(bad).err().unwrap_or_default();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
