//! Harbor project auto-creation before `load` (reference §5): detect Harbor v2 with
//! `GET /api/v2.0/ping`, then `HEAD` each project and `POST` the missing ones as private
//! projects, with the stored credentials for the registry. Anything going wrong here is a
//! warning: the load goes on, and the user may create the project by hand.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use reqwest::{Client, StatusCode, Url};

use crate::console::Console;

const MANUAL: &str = "Please create the Harbor Project manually.";

pub async fn ensure_projects(
    registry: &str,
    projects: &BTreeSet<String>,
    tls_verify: Option<bool>,
    authfile: Option<&Path>,
    console: &Console,
) {
    if projects.is_empty() {
        return;
    }
    let insecure = tls_verify == Some(false);
    let client = match Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_danger_accept_invalid_certs(insecure)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            console.warn(None, format!("Harbor check skipped: {e}"));
            return;
        }
    };
    let Some(base) = detect(&client, registry, insecure).await else {
        return;
    };
    console.info(None, format!("Destination {registry} is Harbor v2"));
    // A credential helper is another program (up to 30 s): not on a runtime thread.
    let (file, name) = (authfile.map(Path::to_path_buf), registry.to_owned());
    let looked_up = tokio::task::spawn_blocking(move || {
        hangar_shared::auth::lookup(file.as_deref(), &name, None)
    })
    .await
    .unwrap_or_else(|e| {
        Err(hangar_shared::Error::internal(format!(
            "credentials lookup: {e}"
        )))
    });
    let creds = match looked_up {
        Ok(c) => c,
        Err(e) => {
            console.warn(None, format!("reading credentials for {registry}: {e}"));
            None
        }
    };
    for project in projects {
        match ensure(&client, &base, project, creds.as_ref()).await {
            Ok(true) => console.info(None, format!("Created Harbor project {project:?}")),
            Ok(false) => {}
            Err(why) => console.warn(None, format!("Harbor project {project:?}: {why}. {MANUAL}")),
        }
    }
}

/// The base URL answering `/api/v2.0/ping` with 200, if the destination is Harbor v2.
async fn detect(client: &Client, registry: &str, insecure: bool) -> Option<String> {
    let mut bases = vec![format!("https://{registry}")];
    if insecure {
        bases.push(format!("http://{registry}"));
    }
    for base in bases {
        if let Ok(r) = client.get(format!("{base}/api/v2.0/ping")).send().await {
            return (r.status() == StatusCode::OK).then_some(base);
        }
    }
    None
}

/// `Ok(true)` when the project was created, `Ok(false)` when it was there.
async fn ensure(
    client: &Client,
    base: &str,
    project: &str,
    creds: Option<&hangar_shared::auth::Credentials>,
) -> Result<bool, String> {
    let auth = |r: reqwest::RequestBuilder| match creds {
        Some(c) => r.basic_auth(&c.username, Some(&c.password)),
        None => r,
    };
    let mut url = Url::parse(&format!("{base}/api/v2.0/projects")).map_err(|e| e.to_string())?;
    url.query_pairs_mut().append_pair("project_name", project);
    let head = auth(client.head(url).header("Accept", "application/json"))
        .send()
        .await
        .map_err(|e| format!("checking it: {e}"))?;
    match head.status() {
        StatusCode::OK => return Ok(false),
        StatusCode::NOT_FOUND => {}
        s => return Err(format!("checking it: HTTP {s}")),
    }
    let body = serde_json::json!({"project_name": project, "metadata": {"public": "false"}});
    let created = auth(client.post(format!("{base}/api/v2.0/projects")))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("creating it: {e}"))?;
    match created.status() {
        StatusCode::CREATED => Ok(true),
        StatusCode::CONFLICT => Ok(false),
        s => Err(format!("creating it: HTTP {s}")),
    }
}
