//! Stage 4: render an app's template into the argv of exactly one `docker run`.
//!
//! Templates are Jinja2 (minijinja) with strict undefined: a typo is an error, never an empty
//! string. Every `{{ value }}` goes through a formatter that shell-quotes it, so no variable can
//! add a word, an option or a command; `|safe` opts out for a value the author vouches for, and
//! `ferry check` warns about each use.
//!
//! The rendered text is then read back by [`shell::split`], which refuses shell operators, and
//! checked to be one `docker run` whose image is ferry's pinned `{{ image }}` and which leaves the
//! flags ferry manages (name, detach, `ferry.*` labels) to ferry. Errors found in the rendered text
//! point back into the template source through minijinja's output spans.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use minijinja::value::{Value, ValueKind};
use minijinja::{
    AutoEscape, Environment, Error as JinjaError, ErrorKind, OutputSpanKind, State, UndefinedBehavior,
};

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};
use crate::inventory::{App, EnvDef, Inventory, RESERVED_NAMES, Target};
use crate::vars::Variables;
use crate::{docker_run, shell};

/// Errors of the render stage.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template could not be read.
    #[error("cannot read template {}: {source}", path.display())]
    Read {
        /// The template file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A template does not compile or does not render (syntax, undefined variable, ...).
    #[error("{0}")]
    Template(Diagnostic),
    /// The rendered text is not exactly one acceptable `docker run`.
    #[error("{0}")]
    Command(Diagnostic),
}

/// Template runtime budget: generous for any real template, but a runaway loop ends in an error
/// instead of hanging `ferry check`.
const FUEL: u64 = 5_000_000;

/// Where a compiled template's text lives, for error locations.
#[derive(Debug, Clone)]
struct Origin {
    file: Arc<SourceFile>,
    /// Offset of the template text inside `file` (non-zero for templates inside the inventory).
    base: usize,
}

/// Compiled templates of every app, ready to render per target.
pub struct Renderer {
    env: Environment<'static>,
    origins: HashMap<String, Origin>,
}

/// Everything a template sees besides the variables.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The resolved variables.
    pub vars: &'a Variables,
    /// The app.
    pub app: &'a App,
    /// The environment's name.
    pub environment: &'a str,
    /// The target being rendered.
    pub target: &'a Target,
    /// The image reference ferry runs.
    pub image: &'a str,
    /// The tag being deployed.
    pub version: &'a str,
    /// This deployment's id.
    pub deployment_id: &'a str,
}

/// An app rendered for one target: the `docker run` arguments after `run`, and the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The template's arguments after `docker run`, options first, then the image and command.
    pub args: Vec<String>,
    /// The app's `env` table with each value rendered.
    pub container_env: BTreeMap<String, String>,
    /// The health command, rendered (a shell command line), if the app has one.
    pub health_cmd: Option<String>,
}

/// A finding of `ferry check` that is not an error.
pub type Warning = Diagnostic;

impl Renderer {
    /// Compiles every app's template, env values and health command; all errors are collected.
    pub fn new(inventory: &Inventory) -> Result<Renderer, Vec<RenderError>> {
        let mut renderer = Renderer { env: environment(), origins: HashMap::new() };
        let mut errors = Vec::new();
        let mut loaded: Vec<&str> = Vec::new();
        for app in &inventory.apps {
            if !loaded.contains(&app.template.as_str()) {
                loaded.push(&app.template);
                if let Err(e) = renderer.load_file(inventory, &app.template) {
                    errors.push(e);
                }
            }
            for (name, text, span) in inline_templates(app) {
                let origin = Origin { file: Arc::clone(&inventory.source), base: span.start + 1 };
                if let Err(e) = renderer.add(name, text, origin) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() { Ok(renderer) } else { Err(errors) }
    }

    fn load_file(&mut self, inventory: &Inventory, name: &str) -> Result<(), RenderError> {
        let path = inventory.templates_dir.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| RenderError::Read { path: path.clone(), source })?;
        let file = SourceFile::new(crate::diagnostic::display_path(&path), text.clone());
        self.add(name.to_string(), text, Origin { file, base: 0 })
    }

    fn add(&mut self, name: String, text: String, origin: Origin) -> Result<(), RenderError> {
        self.origins.insert(name.clone(), origin);
        let result = self.env.add_template_owned(name, text);
        result.map_err(|e| RenderError::Template(self.jinja_diagnostic(&e, None)))
    }

    /// Renders `ctx.app` for `ctx.target`.
    pub fn render(&self, ctx: &Context<'_>) -> Result<Rendered, RenderError> {
        let base = Value::from(base_context(ctx));
        let container_env = self.container_env(ctx, &base)?;
        let env_map: BTreeMap<&str, Value> =
            container_env.iter().map(|(k, v)| (k.as_str(), Value::from(v.as_str()))).collect();
        // Layer `container_env` over the base context without copying it.
        let extra: BTreeMap<&str, Value> = BTreeMap::from([("container_env", Value::from(env_map))]);
        let context = minijinja::value::merge_maps([Value::from(extra), base]);
        let name = ctx.app.template.as_str();
        let text = self.render_one(name, &context, ctx.vars)?;
        let managed = crate::docker_run::Managed {
            proxied: ctx.app.route(ctx.environment).is_some(),
            networks: !ctx.app.networks(ctx.environment).is_empty(),
            volumes: ctx.app.volumes(ctx.environment),
        };
        let args = self.command_args(name, &text, &context, ctx.image, &managed)?;
        let health_cmd = match ctx.app.health.cmd {
            Some(_) => Some(self.render_one(&health_name(&ctx.app.name), &context, ctx.vars)?),
            None => None,
        };
        Ok(Rendered { args, container_env, health_cmd })
    }

    /// Renders the app's `post_deploy` script for `ctx.target`, with the new container's
    /// details as `container`; `None` when the app has none.
    pub fn render_post_deploy(
        &self,
        ctx: &Context<'_>,
        container: &crate::docker::ContainerDetails,
    ) -> Result<Option<String>, RenderError> {
        if ctx.app.post_deploy.is_none() {
            return Ok(None);
        }
        let base = Value::from(base_context(ctx));
        let extra = BTreeMap::from([("container", container_value(container))]);
        let context = minijinja::value::merge_maps([Value::from(extra), base]);
        self.render_one(&post_deploy_name(&ctx.app.name), &context, ctx.vars).map(Some)
    }

    /// Names that templates of `app` read at top level (for "unused variable" warnings).
    pub fn referenced_names(&self, app: &App) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut templates = vec![app.template.clone()];
        templates.extend(inline_templates(app).into_iter().map(|(n, _, _)| n));
        for name in templates {
            if let Ok(t) = self.env.get_template(&name) {
                names.extend(t.undeclared_variables(false));
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Every `|safe` in the app's command template, as warnings.
    pub fn safe_uses(&self, app: &App) -> Vec<Warning> {
        let Some(origin) = self.origins.get(&app.template) else { return Vec::new() };
        let text = &origin.file.text;
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(pipe) = text[from..].find('|').map(|i| i + from) {
            from = pipe + 1;
            let rest = text[from..].trim_start();
            let is_safe = rest.starts_with("safe")
                && !rest[4..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            if is_safe {
                out.push(
                    Diagnostic::new(format!("`|safe` in {} inserts a value without shell quoting", app.template))
                        .at(&origin.file, pipe..pipe + 1 + (text[from..].len() - rest.len()) + 4)
                        .help("the value can add words or options to the docker command: make sure it cannot come from user input"),
                );
            }
        }
        out
    }

    fn container_env(
        &self,
        ctx: &Context<'_>,
        context: &Value,
    ) -> Result<BTreeMap<String, String>, RenderError> {
        let mut out = BTreeMap::new();
        for (key, (def, name)) in env_defs(ctx.app, ctx.environment) {
            let text =
                if def.is_template { self.render_one(&name, context, ctx.vars)? } else { def.text.clone() };
            out.insert(key.to_string(), text);
        }
        Ok(out)
    }

    fn render_one(&self, name: &str, context: &Value, vars: &Variables) -> Result<String, RenderError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| RenderError::Template(self.jinja_diagnostic(&e, Some(vars))))?;
        template.render(context).map_err(|e| RenderError::Template(self.jinja_diagnostic(&e, Some(vars))))
    }

    /// Splits and checks the rendered command; returns the arguments after `docker run`.
    fn command_args(
        &self,
        name: &str,
        text: &str,
        context: &Value,
        image: &str,
        managed: &crate::docker_run::Managed<'_>,
    ) -> Result<Vec<String>, RenderError> {
        let fail = |offset: usize, message: String, help: Option<String>| {
            RenderError::Command(self.output_diagnostic(name, context, offset, message).maybe_help(help))
        };
        let words = shell::split(text).map_err(|e| fail(e.offset, e.message, None))?;
        let (checked, options) = docker_run::check_with_options(&words, image, managed)
            .map_err(|(offset, message, help)| fail(offset, message, help))?;
        if let Some(error) = self.option_from_value(name, context, &options) {
            return Err(error);
        }
        Ok(checked)
    }

    /// A value must not become an option of `docker run` (`--set extra=--privileged` in front
    /// of `{{ image }}`): quoting keeps it one word, but docker still reads a word that starts
    /// with `-` there as a flag. The error names the expression whose value starts the word.
    fn option_from_value(&self, name: &str, context: &Value, options: &[usize]) -> Option<RenderError> {
        if options.is_empty() {
            return None;
        }
        let (template, origin) = (self.env.get_template(name).ok()?, self.origins.get(name)?);
        let (_, spans) = template.render_with_spans(context).ok()?;
        options.iter().find_map(|&offset| {
            let span = spans.iter().find(|s| s.output_range().contains(&offset))?;
            if span.kind() == OutputSpanKind::Raw {
                return None;
            }
            let range = origin.base + span.source_range().start..origin.base + span.source_range().end;
            let expr = origin.file.text.get(range.clone()).unwrap_or("").trim().to_string();
            let variable = expr.trim_start_matches("{{").trim_end_matches("}}").trim().to_string();
            let message = format!(
                "the value of `{variable}` starts a word with `-` where docker reads an option: \
                 a variable cannot add an option to docker run"
            );
            Some(RenderError::Command(
                Diagnostic::new(message)
                    .at(&origin.file, range)
                    .help("put the option in the template itself, or give the value without a leading `-`"),
            ))
        })
    }

    /// A diagnostic at byte `offset` of template `name`'s output, located in the template source.
    fn output_diagnostic(&self, name: &str, context: &Value, offset: usize, message: String) -> Diagnostic {
        let diagnostic = Diagnostic::new(message);
        let (Ok(template), Some(origin)) = (self.env.get_template(name), self.origins.get(name)) else {
            return diagnostic;
        };
        let Ok((output, spans)) = template.render_with_spans(context) else { return diagnostic };
        let span = spans.iter().find(|s| s.output_range().contains(&offset)).or_else(|| spans.last());
        match span {
            Some(s) if s.kind() == OutputSpanKind::Raw => {
                // Underline the rendered word (up to whitespace), within this raw span.
                let word_end = output
                    .get(offset..)
                    .and_then(|t| t.find(char::is_whitespace))
                    .map_or(output.len(), |i| offset + i);
                let width = word_end.min(s.output_range().end).saturating_sub(offset).max(1);
                let at = origin.base + s.source_range().start + (offset - s.output_range().start.min(offset));
                diagnostic.at(&origin.file, at..at + width)
            }
            Some(s) => {
                let range = s.source_range();
                let expr = origin
                    .file
                    .text
                    .get(origin.base + range.start..origin.base + range.end)
                    .unwrap_or("")
                    .trim()
                    .to_string();
                Diagnostic::new(format!(
                    "{} (in the value of `{{{{ {expr} }}}}`, which is not quoted)",
                    diagnostic.message
                ))
                .at(&origin.file, origin.base + range.start..origin.base + range.end)
            }
            None => diagnostic,
        }
    }

    fn jinja_diagnostic(&self, error: &JinjaError, vars: Option<&Variables>) -> Diagnostic {
        let origin = error.name().and_then(|n| self.origins.get(n));
        let mut message = match error.kind() {
            ErrorKind::UndefinedError => "undefined variable in template".to_string(),
            _ => {
                error.detail().map_or_else(|| error.kind().to_string(), |d| format!("{}: {d}", error.kind()))
            }
        };
        let mut help = None;
        let mut diagnostic_at = None;
        if let Some(origin) = origin {
            let text = &origin.file.text;
            let range = error.range().map(|r| origin.base + r.start..origin.base + r.end);
            let mut range = range.or_else(|| error.line().map(|l| line_range(text, origin.base, l)));
            // minijinja points an unclosed block at the end of the input; the place to fix is
            // where the block opens.
            let at_end = error.kind() == ErrorKind::SyntaxError
                && error.detail().is_some_and(|d| d.contains("unexpected end of input"));
            if let Some(end) = range.as_ref().map(|r| r.end).filter(|_| at_end)
                && let Some((keyword, opens)) = text.get(origin.base..end).and_then(unclosed_block)
            {
                message = format!("syntax error: `{{% {keyword} %}}` is never closed");
                help = Some(format!("close it with `{{% end{keyword} %}}`"));
                range = Some(origin.base + opens.start..origin.base + opens.end);
            }
            if let Some(range) = range {
                if error.kind() == ErrorKind::UndefinedError {
                    let word = undefined_name(text.get(range.clone()).unwrap_or(""));
                    message = format!("undefined variable `{word}`");
                    help = vars
                        .and_then(|v| {
                            did_you_mean(
                                &word,
                                v.keys().map(String::as_str).chain(RESERVED_NAMES.iter().copied()),
                            )
                        })
                        .or_else(|| {
                            Some("define it in the inventory's vars, or pass --set NAME=VALUE".into())
                        });
                }
                diagnostic_at = Some(origin.file.locate(range));
            }
        }
        let diagnostic = Diagnostic::new(message).maybe_help(help);
        match diagnostic_at {
            Some(at) => diagnostic.at_location(at),
            None => diagnostic,
        }
    }
}

/// The innermost block tag (`{% for %}`, `{% if %}`, ...) of `text` that has no end tag: its
/// keyword and where the tag is.
fn unclosed_block(text: &str) -> Option<(String, Range<usize>)> {
    const BLOCKS: [&str; 8] = ["for", "if", "macro", "block", "filter", "with", "call", "autoescape"];
    let mut open: Vec<(String, Range<usize>)> = Vec::new();
    let mut rest = 0;
    while let Some(start) = text.get(rest..)?.find(['{']).map(|i| rest + i) {
        // Tags in a comment are not tags.
        if text[start..].starts_with("{#") {
            rest = text[start + 2..].find("#}").map_or(text.len(), |i| start + 4 + i);
            continue;
        }
        if !text[start..].starts_with("{%") {
            rest = start + 1;
            continue;
        }
        // A `{%` never closed runs to the end of the text: cutting two bytes off that end could
        // split a character wider than one byte.
        let (inner_end, end) =
            text[start + 2..].find("%}").map_or((text.len(), text.len()), |i| (start + 2 + i, start + 4 + i));
        let inner = text[start + 2..inner_end].trim_start_matches(['-', '+']);
        let keyword: String =
            inner.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if BLOCKS.contains(&keyword.as_str()) {
            open.push((keyword, start..end));
        } else if let Some(closed) = keyword.strip_prefix("end")
            && let Some(at) = open.iter().rposition(|(k, _)| k == closed)
        {
            open.truncate(at);
        }
        rest = end;
    }
    open.pop()
}

/// Renders a bare template string with the shell formatter (used by tests and fuzzing).
pub fn render_str(source: &str, context: Value) -> Result<String, JinjaError> {
    environment().render_str(source, context)
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_debug(false);
    // Inventory env values are plain strings (quoted later, when the command uses them); command
    // and health templates are shell text.
    env.set_auto_escape_callback(|name| {
        if name.starts_with("env:") { AutoEscape::None } else { AutoEscape::Custom("shell".into()) }
    });
    env.set_formatter(shell_formatter);
    env
}

/// Writes `value` shell-quoted, unless it is `|safe` or the template is not shell text.
fn shell_formatter(
    out: &mut minijinja::Output<'_>,
    state: &mut State<'_, '_>,
    value: &Value,
) -> Result<(), JinjaError> {
    let plain = matches!(state.auto_escape(), AutoEscape::None) || value.is_safe();
    let text = match value.kind() {
        ValueKind::Undefined | ValueKind::None => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "a none value cannot be part of a command line",
            ));
        }
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable if !plain => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "a list or table cannot be one argument: loop over it, or join it (|join(\",\"))",
            ));
        }
        _ => match value.as_str() {
            Some(s) => s.to_string(),
            None => value.to_string(),
        },
    };
    let written = if plain {
        text
    } else {
        shell::quote(&text).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?
    };
    out.write_str(&written).map_err(|_| JinjaError::new(ErrorKind::WriteFailure, "cannot write output"))
}

/// The name of the compiled template for an env value (`env:APP:KEY` or `env:APP@ENV:KEY`).
fn env_template_name(app: &str, env: Option<&str>, key: &str) -> String {
    match env {
        Some(env) => format!("env:{app}@{env}:{key}"),
        None => format!("env:{app}:{key}"),
    }
}

fn health_name(app: &str) -> String {
    format!("health:{app}")
}

fn post_deploy_name(app: &str) -> String {
    format!("post_deploy:{app}")
}

/// The templates an app keeps inside the inventory: env values and the health command.
fn inline_templates(app: &App) -> Vec<(String, String, Range<usize>)> {
    let mut out = Vec::new();
    let app_env = app.env.iter().map(|(k, d)| (env_template_name(&app.name, None, k), d));
    let env_env = app
        .environments
        .iter()
        .flat_map(|(env, o)| o.env.iter().map(move |(k, d)| (env_template_name(&app.name, Some(env), k), d)));
    for (name, def) in app_env.chain(env_env) {
        if def.is_template {
            out.push((name, def.text.clone(), def.span.clone()));
        }
    }
    if let Some((cmd, span)) = &app.health.cmd {
        out.push((health_name(&app.name), cmd.clone(), span.clone()));
    }
    if let Some((script, span)) = &app.post_deploy {
        out.push((post_deploy_name(&app.name), script.clone(), span.clone()));
    }
    out
}

/// The env definitions of `app` in `env`, with the compiled template name of each.
fn env_defs<'a>(app: &'a App, env: &str) -> BTreeMap<&'a str, (&'a EnvDef, String)> {
    let mut out: BTreeMap<&str, (&EnvDef, String)> =
        app.env.iter().map(|(k, d)| (k.as_str(), (d, env_template_name(&app.name, None, k)))).collect();
    if let Some(overrides) = app.environments.get(env) {
        for (k, d) in &overrides.env {
            out.insert(k.as_str(), (d, env_template_name(&app.name, Some(env), k)));
        }
    }
    out
}

fn base_context(ctx: &Context<'_>) -> BTreeMap<String, Value> {
    let mut values: BTreeMap<String, Value> =
        ctx.vars.iter().map(|(k, r)| (k.clone(), toml_to_value(&r.value))).collect();
    let target: BTreeMap<&str, Value> = [
        ("name", Value::from(ctx.target.name.as_str())),
        ("host", Value::from(ctx.target.host.as_str())),
        ("roles", ctx.target.roles.iter().map(|r| Value::from(r.as_str())).collect()),
    ]
    .into_iter()
    .collect();
    values.insert("target".into(), Value::from(target));
    values.insert("image".into(), Value::from(ctx.image));
    values.insert("version".into(), Value::from(ctx.version));
    values.insert("app".into(), Value::from(ctx.app.name.as_str()));
    values.insert("environment".into(), Value::from(ctx.environment));
    let deployment: BTreeMap<&str, Value> = [("id", Value::from(ctx.deployment_id))].into_iter().collect();
    values.insert("deployment".into(), Value::from(deployment));
    values
}

/// A container's details as a template value: `id`, `name`, `image`, `digest`, `ip`, `ips`
/// (per network) and `ports` (each `container`, `host_ip`, `host_port`).
fn container_value(c: &crate::docker::ContainerDetails) -> Value {
    let ports: Vec<Value> = c
        .ports
        .iter()
        .map(|p| {
            let port: BTreeMap<&str, Value> = [
                ("container", Value::from(p.container.as_str())),
                ("host_ip", Value::from(p.host_ip.as_str())),
                ("host_port", Value::from(p.host_port.as_str())),
            ]
            .into_iter()
            .collect();
            Value::from(port)
        })
        .collect();
    let ips: BTreeMap<&str, Value> =
        c.ips.iter().map(|(n, ip)| (n.as_str(), Value::from(ip.as_str()))).collect();
    let map: BTreeMap<&str, Value> = [
        ("id", Value::from(c.id.as_str())),
        ("name", Value::from(c.name.as_str())),
        ("image", Value::from(c.image.as_str())),
        ("digest", Value::from(c.digest.clone().unwrap_or_default())),
        ("ip", Value::from(c.ip.as_str())),
        ("ips", Value::from(ips)),
        ("ports", Value::from(ports)),
    ]
    .into_iter()
    .collect();
    Value::from(map)
}

/// A TOML value as a template value (datetimes become their TOML text).
pub fn toml_to_value(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(items) => items.iter().map(toml_to_value).collect(),
        toml::Value::Table(table) => {
            let map: BTreeMap<&str, Value> =
                table.iter().map(|(k, v)| (k.as_str(), toml_to_value(v))).collect();
            Value::from(map)
        }
    }
}

fn line_range(text: &str, base: usize, line: usize) -> Range<usize> {
    let start =
        base + text[base..].split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum::<usize>();
    let end = text[start.min(text.len())..].find('\n').map_or(text.len(), |i| start + i);
    start..end
}

/// The variable name at the start of an undefined expression like `prot` or `target.nmae`.
fn undefined_name(expr: &str) -> String {
    let expr = expr.trim();
    let end = expr.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(expr.len());
    expr[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatter_quotes_values_and_safe_opts_out() {
        let ctx = Value::from(BTreeMap::from([("v", Value::from("a b; rm -rf /"))]));
        assert_eq!(render_str("x {{ v }}", ctx.clone()).ok().as_deref(), Some("x 'a b; rm -rf /'"));
        assert_eq!(render_str("x {{ v|safe }}", ctx).ok().as_deref(), Some("x a b; rm -rf /"));
        assert!(render_str("{{ nope }}", Value::from(())).is_err());
    }
}
