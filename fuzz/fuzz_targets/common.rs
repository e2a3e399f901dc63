//! Shared by the fuzz targets: plan every app in every environment of an inventory.

use ferry::planning::{PlanRequest, build_plan};
use ferry::inventory::Inventory;
use ferry::render::Renderer;
use ferry::vars::MissingSecrets;

/// Errors are expected; only a panic (or a sanitizer report) is a finding.
pub fn plan_everything(inventory: &Inventory) {
    let Ok(renderer) = Renderer::new(inventory) else { return };
    let lookup = |name: &str| (name != "UNSET").then(|| "secret".to_string());
    for app in &inventory.apps {
        for env in &inventory.environments {
            let request = PlanRequest {
                app: &app.name,
                environment: &env.name,
                version: "1",
                digest: None,
                limits: &[],
                sets: &[],
                deployment: "d",
                env: &lookup,
                missing_secrets: MissingSecrets::Error,
                hash_key: b"",
            };
            let _ = build_plan(inventory, &renderer, &request);
        }
    }
}

/// A templates folder with one valid template, made once per fuzzing process.
pub fn workdir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        std::fs::write(
            dir.join("templates/web.j2"),
            "docker run -p {{ port }}:80 {% for k, v in container_env|items %}-e {{ k }}={{ v }} {% endfor %}{{ image }}\n",
        )
        .unwrap();
        dir
    })
}
