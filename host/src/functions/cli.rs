//! `urna-host functions …`: the admin API from a shell. The admin address comes from
//! `URNA_ADMIN_URL` (default `http://127.0.0.1:8091`), the token from `URNA_ADMIN_TOKEN`.
//! Prints the API's JSON answer; exits 1 (and prints the error) when it refuses.

const USAGE: &str = "usage: urna-host functions <command>
  list                                   functions, versions, what serves
  show <name>                            one function
  deploy <name> <module.wasm> [--activate]  upload (checked) a version
  activate <name> <version>              make a version active (promote a canary)
  canary <name> <version> <percent>      send 1-99 % of votes to a version
  end-canary <name>                      stop the canary
  rollback <name> [<version>]            back to the previous (or a named) version
  delete <name> <version>                forget a version that is not serving
  limits <name> [cpu_budget_ms=N] [wall_limit_ms=N] [memory_mb=N] [max_instances=N]
                                         the function's own limits (none: the host's)
  audit [<limit>]                        the newest changes
env: URNA_ADMIN_URL (http://127.0.0.1:8091), URNA_ADMIN_TOKEN";

/// Runs the command in `args` (after `functions`); the process's exit code.
pub async fn run(args: &[String]) -> i32 {
    match request(args).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            2
        }
    }
}

async fn request(args: &[String]) -> Result<i32, String> {
    let base = std::env::var("URNA_ADMIN_URL").unwrap_or_else(|_| "http://127.0.0.1:8091".into());
    let base = base.trim_end_matches('/');
    let token = std::env::var("URNA_ADMIN_TOKEN").map_err(|_| {
        "URNA_ADMIN_TOKEN is not set (the token the host was started with)".to_owned()
    })?;
    let http = reqwest::Client::new();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = |name: &str, rest: &str| format!("{base}/v1/functions/{name}{rest}");
    let builder = match a.as_slice() {
        ["list"] => http.get(format!("{base}/v1/functions")),
        ["show", name] => http.get(f(name, "")),
        ["deploy", name, file, flags @ ..] => {
            let activate = match flags {
                [] => false,
                ["--activate"] => true,
                _ => return Err(USAGE.into()),
            };
            let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
            http.post(f(name, &format!("/versions?activate={activate}")))
                .header("content-type", "application/wasm")
                .body(bytes)
        }
        ["activate", name, version] => http
            .put(f(name, "/active"))
            .json(&serde_json::json!({ "version": version })),
        ["canary", name, version, percent] => {
            let percent: u8 = percent
                .parse()
                .map_err(|_| format!("percent {percent:?} is not 1-99"))?;
            http.put(f(name, "/canary"))
                .json(&serde_json::json!({ "version": version, "percent": percent }))
        }
        ["end-canary", name] => http.delete(f(name, "/canary")),
        ["rollback", name] => http.post(f(name, "/rollback")).json(&serde_json::json!({})),
        ["rollback", name, version] => http
            .post(f(name, "/rollback"))
            .json(&serde_json::json!({ "version": version })),
        ["delete", name, version] => http.delete(f(name, &format!("/versions/{version}"))),
        ["limits", name, settings @ ..] => http.put(f(name, "/limits")).json(&limits(settings)?),
        ["audit"] => http.get(format!("{base}/v1/audit")),
        ["audit", limit] => http.get(format!("{base}/v1/audit?limit={limit}")),
        _ => return Err(USAGE.into()),
    };
    let response = builder
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(0)
    } else {
        eprintln!("{status}: {pretty}");
        Ok(1)
    }
}

/// `key=N` arguments as the limits body; the API names what it refuses.
fn limits(settings: &[&str]) -> Result<serde_json::Value, String> {
    let mut body = serde_json::Map::new();
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?} is not key=N\n{USAGE}"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{key}: {value:?} is not a number"))?;
        body.insert(key.to_owned(), n.into());
    }
    Ok(body.into())
}
