//! `xmbridge simulate`: serve a simulated Qualtrics brand on loopback until Ctrl-C or SIGTERM.

use super::UsageError;
use anyhow::Context;
use clap::Args;
use serde_json::{Map, Value};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use xmbridge_sim::qualtrics::faults::FaultSettings;
use xmbridge_sim::{SimConfig, SimHandle};

fn defaults() -> SimConfig {
    SimConfig::default()
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # A brand with 5 surveys of 10 000 responses each, on a fixed port and token:
  xmbridge simulate --listen 127.0.0.1:8080 --seed 7 --surveys 5 --responses 10000 --api-token mytoken
  curl -H 'X-API-TOKEN: mytoken' http://127.0.0.1:8080/API/v3/whoami

  # Every simulated user's credentials (API tokens, OAuth clients):
  curl http://127.0.0.1:8080/_sim/credentials

  # Mutual TLS, writing the client certificate bundle into ./mtls:
  xmbridge simulate --mtls --mtls-dir ./mtls

  # Switch on faults from the start (also changeable at run time: POST /_sim/faults):
  xmbridge simulate --fault key=value --fault other=3

  # A Salesforce org instead (OAuth + REST under /services/data/v60.0; docs/simulator/salesforce.md):
  xmbridge simulate --salesforce --listen 127.0.0.1:8090
  curl http://127.0.0.1:8090/_sim/credentials

  # A ServiceNow instance instead (Table API, OAuth, import sets; see docs/simulator/servicenow.md):
  xmbridge simulate --servicenow --instance acme --incidents 100
  curl http://127.0.0.1:PORT/_sim/credentials

The first line printed is always 'listening on URL'. Same seed and settings give the same data,
byte for byte.")]
pub struct SimulateArgs {
    /// Address to listen on; loopback only (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", value_parser = parse_loopback, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Seed of all generated data.
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,

    /// Number of surveys in the brand.
    #[arg(long, default_value_t = defaults().surveys)]
    pub surveys: usize,

    /// Responses per survey (generated on demand, not held in memory).
    #[arg(long, default_value_t = defaults().responses)]
    pub responses: u64,

    /// Questions per survey (at least; each survey also has one question of every kind).
    #[arg(long, default_value_t = defaults().questions)]
    pub questions: usize,

    /// Contacts in the XM Directory.
    #[arg(long, default_value_t = defaults().contacts)]
    pub contacts: usize,

    /// The brand administrator's API token (default: derived from the seed).
    #[arg(
        long,
        env = "XMBRIDGE_SIM_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,

    /// Brand (organization) id.
    #[arg(long = "brand", default_value_t = defaults().brand_id, value_name = "ID")]
    pub brand: String,

    /// Data center the brand lives in (fra1, iad1, ca1, …).
    #[arg(long, default_value_t = defaults().datacenter, value_name = "DC")]
    pub datacenter: String,

    /// Lifetime of OAuth access tokens, in seconds.
    #[arg(long = "token-ttl", default_value_t = defaults().token_ttl_secs, value_name = "SECS")]
    pub token_ttl: u64,

    /// Brand-wide request limit per minute (429 with Retry-After beyond it); 0 turns it off.
    #[arg(long = "rate-limit", default_value_t = defaults().rate_limit_per_min, value_name = "N")]
    pub rate_limit: u32,

    /// How long a response export takes to complete, in milliseconds.
    #[arg(long = "export-delay-ms", default_value_t = defaults().export_delay_ms, value_name = "MS")]
    pub export_delay_ms: u64,

    /// Serve HTTPS and require client certificates signed by the brand's CA.
    #[arg(long)]
    pub mtls: bool,

    /// Where to write the client bundle (CA, client certificate and key) with --mtls.
    #[arg(
        long,
        requires = "mtls",
        value_name = "DIR",
        default_value = "xmbridge-mtls"
    )]
    pub mtls_dir: PathBuf,

    /// A fault switch, KEY=VALUE (VALUE is read as JSON when it parses, else as a string).
    /// Repeatable. See docs/simulator.md for the keys.
    #[arg(long = "fault", value_name = "KEY=VALUE", value_parser = parse_fault)]
    pub faults: Vec<(String, Value)>,

    /// Serve a simulated Salesforce org (OAuth, REST, outbound messages) instead of Qualtrics.
    /// Uses --seed; the Qualtrics-only flags are ignored.
    #[arg(long, conflicts_with_all = ["mtls"])]
    pub salesforce: bool,

    /// With --salesforce: the org's daily API request allowance.
    #[arg(
        long = "sf-api-limit",
        default_value_t = 15_000,
        value_name = "N",
        requires = "salesforce"
    )]
    pub sf_api_limit: u64,

    /// Serve a simulated ServiceNow instance instead of Qualtrics (uses --listen and --seed).
    #[arg(long, conflicts_with_all = ["mtls", "faults", "salesforce"])]
    pub servicenow: bool,

    /// ServiceNow instance name (with --servicenow).
    #[arg(
        long,
        requires = "servicenow",
        default_value = "dev-xmbridge",
        value_name = "NAME"
    )]
    pub instance: String,

    /// Incidents in the ServiceNow instance (with --servicenow).
    #[arg(long, requires = "servicenow", default_value_t = 30, value_name = "N")]
    pub incidents: usize,
}

/// A socket address on loopback; `localhost:PORT` is accepted as `127.0.0.1:PORT`.
fn parse_loopback(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match s.strip_prefix("localhost:").map(str::parse::<u16>) {
            Some(Ok(port)) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            _ => {
                return Err(format!(
                    "'{s}' is not an address with a port; use e.g. 127.0.0.1:8080 (port 0 picks a free port)"
                ));
            }
        },
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "the simulator only listens on loopback addresses; {addr} is not one (use 127.0.0.1:PORT). \
             It is a development tool with well-known credentials, never a network service."
        ));
    }
    Ok(addr)
}

/// `key=value`; the value is JSON when it parses (`3`, `true`, `{"a":1}`), else a string.
fn parse_fault(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("'{s}' has an empty key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// The `--fault` pairs as the simulator's fault settings (later keys win), checked exactly as
/// `POST /_sim/faults` checks them at run time.
pub fn fault_settings(pairs: &[(String, Value)]) -> Result<FaultSettings, UsageError> {
    let map: Map<String, Value> = pairs.iter().cloned().collect();
    FaultSettings::from_json(Value::Object(map)).map_err(|e| {
        UsageError(format!(
            "invalid --fault: {e} (see docs/simulator/tls-and-faults.md)"
        ))
    })
}

fn check_token(token: &str) -> Result<(), UsageError> {
    if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(UsageError(
            "--api-token must be non-empty printable ASCII without spaces".into(),
        ));
    }
    Ok(())
}

fn check_datacenter(dc: &str) -> Result<String, UsageError> {
    xmbridge_qualtrics::DataCenter::parse(dc)
        .map(|_| dc.trim().to_ascii_lowercase())
        .map_err(|e| UsageError(format!("--datacenter: {e}")))
}

fn check_brand(brand: &str) -> Result<(), UsageError> {
    let ok = !brand.is_empty()
        && brand.len() <= 63
        && brand
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "--brand '{brand}': use lowercase letters, digits and '-' (it becomes a host name label)"
        )))
    }
}

/// The simulator settings the flags describe.
pub fn config(args: &SimulateArgs) -> Result<SimConfig, UsageError> {
    if let Some(t) = &args.api_token {
        check_token(t)?;
    }
    check_brand(&args.brand)?;
    Ok(SimConfig {
        seed: args.seed,
        surveys: args.surveys,
        responses: args.responses,
        questions: args.questions,
        contacts: args.contacts,
        api_token: args.api_token.clone().unwrap_or_default(),
        brand_id: args.brand.clone(),
        datacenter: check_datacenter(&args.datacenter)?,
        token_ttl_secs: args.token_ttl,
        rate_limit_per_min: args.rate_limit,
        export_delay_ms: args.export_delay_ms,
        mtls: args.mtls,
        faults: fault_settings(&args.faults)?,
        ..SimConfig::default()
    })
}

/// Writes the mutual-TLS client bundle (CA certificate, client certificate and key) into `dir`.
fn write_client_bundle(handle: &SimHandle, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let pki = handle
        .sim
        .pki
        .as_ref()
        .context("mutual TLS is on but the simulator has no PKI")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(pki.write_client_bundle(dir)?)
}

fn token_line(cfg: &SimConfig, base: &str) -> String {
    if cfg.api_token.is_empty() {
        let token = cfg.admin_token();
        let hint: String = token.chars().take(6).collect();
        format!(
            "admin API token: {hint}… (derived from the seed; the full value: GET {base}/_sim/credentials, or choose one with --api-token)"
        )
    } else {
        format!("admin API token: {} (from --api-token)", cfg.api_token)
    }
}

/// `xmbridge simulate --salesforce`: one simulated Salesforce org.
async fn run_salesforce(args: &SimulateArgs) -> anyhow::Result<()> {
    let cfg = xmbridge_sim::salesforce::SalesforceConfig {
        seed: args.seed,
        api_limit: args.sf_api_limit,
        ..Default::default()
    };
    let handle = xmbridge_sim::start_salesforce(cfg, args.listen)
        .await
        .context("cannot start the Salesforce simulator")?;
    let stop = super::shutdown_signal();
    let base = handle.base_url.clone();
    let mut out = std::io::stdout().lock();
    // The first line is a contract: scripts and tests read the URL from it.
    writeln!(out, "listening on {base}")?;
    out.flush()?;
    let info = format!(
        "Salesforce org {} (seed {}): instance URL and login host {base}\n\
         token endpoint: {}\n\
         connected app, users and secrets: GET {base}/_sim/credentials\n\
         try: curl {base}/services/data\nstop with Ctrl-C\n",
        handle.sim.org_id,
        args.seed,
        handle.token_url()
    );
    let _ = out.write_all(info.as_bytes()).and_then(|()| out.flush());
    drop(out);
    stop.await;
    eprintln!("stopping the simulator");
    handle.stop().await;
    Ok(())
}

/// `xmbridge simulate --servicenow`: the same first line, then how to log in.
async fn run_servicenow(args: SimulateArgs) -> anyhow::Result<()> {
    check_brand(&args.instance).map_err(|_| {
        UsageError(format!(
            "--instance '{}': use lowercase letters, digits and '-'",
            args.instance
        ))
    })?;
    let cfg = xmbridge_sim::servicenow::SnConfig {
        seed: args.seed,
        instance: args.instance.clone(),
        incidents: args.incidents,
        ..Default::default()
    };
    let handle = xmbridge_sim::start_servicenow(cfg, args.listen)
        .await
        .context("cannot start the ServiceNow simulator")?;
    let stop = super::shutdown_signal();
    let base = handle.base_url.clone();
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {base}")?;
    out.flush()?;
    let info = format!(
        "ServiceNow instance {} (seed {}: {} incidents)\nTable API: {base}/api/now/table/incident\nOAuth token endpoint: {base}/oauth_token.do\nusers, passwords and the OAuth client: GET {base}/_sim/credentials\nstop with Ctrl-C\n",
        args.instance, args.seed, args.incidents
    );
    let _ = out.write_all(info.as_bytes()).and_then(|()| out.flush());
    drop(out);
    stop.await;
    eprintln!("stopping the simulator");
    handle.stop().await;
    Ok(())
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if args.servicenow {
        return run_servicenow(args).await;
    }
    if args.salesforce {
        return run_salesforce(&args).await;
    }
    let cfg = config(&args)?;
    let summary = format!(
        "brand: {} in data center {} (seed {}: {} surveys × {} responses, {} contacts)",
        cfg.brand_id, cfg.datacenter, cfg.seed, cfg.surveys, cfg.responses, cfg.contacts
    );
    let handle = xmbridge_sim::start_qualtrics(cfg, args.listen)
        .await
        .context("cannot start the simulator")?;
    let stop = super::shutdown_signal();
    let base = handle.base_url.clone();
    // Written before the first line, so the bundle exists as soon as a script sees the URL.
    let bundle = if args.mtls {
        write_client_bundle(&handle, &args.mtls_dir)?
    } else {
        Vec::new()
    };
    let mut out = std::io::stdout().lock();
    // The first line is a contract: scripts and tests read the URL from it.
    writeln!(out, "listening on {base}")?;
    out.flush()?;
    // The rest is for people. A script that stops reading after the first line closes the pipe;
    // the server must keep serving then, so later write errors are ignored.
    let mut info = format!(
        "{summary}\nAPI base URL: {}\n{}\ncredentials of every simulated user (tokens, OAuth clients): GET {base}/_sim/credentials\n",
        handle.api_url(),
        token_line(&handle.sim.cfg, &base)
    );
    if !bundle.is_empty() {
        info.push_str("mutual TLS client bundle:\n");
        for f in &bundle {
            info.push_str(&format!("  {}\n", f.display()));
        }
    }
    info.push_str(&format!(
        "try: curl -H 'X-API-TOKEN: <token>' {}/whoami\nstop with Ctrl-C\n",
        handle.api_url()
    ));
    let _ = out.write_all(info.as_bytes()).and_then(|()| out.flush());
    drop(out);
    stop.await;
    eprintln!("stopping the simulator");
    handle.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_must_be_loopback() {
        assert!(parse_loopback("127.0.0.1:0").is_ok());
        assert!(parse_loopback("[::1]:9").is_ok());
        assert_eq!(
            parse_loopback("localhost:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(
            parse_loopback("0.0.0.0:1")
                .unwrap_err()
                .contains("loopback")
        );
        assert!(parse_loopback("192.168.1.2:80").is_err());
        assert!(parse_loopback("127.0.0.1").unwrap_err().contains("port"));
    }

    #[test]
    fn fault_values_are_json_or_strings() {
        assert_eq!(parse_fault("a=3").unwrap(), ("a".into(), Value::from(3)));
        assert_eq!(parse_fault("a=true").unwrap().1, Value::Bool(true));
        assert_eq!(parse_fault("a=x=y").unwrap().1, Value::from("x=y"));
        assert_eq!(parse_fault("a=").unwrap().1, Value::from(""));
        assert_eq!(parse_fault("a={\"b\":1}").unwrap().1["b"], 1);
        assert!(parse_fault("novalue").is_err());
        assert!(parse_fault("=1").is_err());
    }

    #[test]
    fn unknown_fault_key_is_a_clear_error() {
        let err = fault_settings(&[("nope".into(), Value::from(1))]).unwrap_err();
        assert!(err.0.contains("nope"), "{err}");
        assert!(fault_settings(&[]).is_ok());
    }

    #[test]
    fn flags_map_into_the_config() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: SimulateArgs,
        }
        let t = T::try_parse_from([
            "t",
            "--seed",
            "9",
            "--surveys",
            "3",
            "--responses",
            "10",
            "--questions",
            "4",
            "--contacts",
            "5",
            "--api-token",
            "tok",
            "--brand",
            "acme",
            "--datacenter",
            "CO1",
            "--token-ttl",
            "60",
            "--rate-limit",
            "100",
            "--export-delay-ms",
            "0",
        ])
        .unwrap();
        let c = config(&t.a).unwrap();
        assert_eq!(
            (c.seed, c.surveys, c.responses, c.questions, c.contacts),
            (9, 3, 10, 4, 5)
        );
        assert_eq!((c.api_token.as_str(), c.brand_id.as_str()), ("tok", "acme"));
        assert_eq!(c.datacenter, "co1");
        assert_eq!(
            (c.token_ttl_secs, c.rate_limit_per_min, c.export_delay_ms),
            (60, 100, 0)
        );
        assert!(!c.mtls);
        assert!(
            T::try_parse_from(["t", "--mtls-dir", "x"]).is_err(),
            "needs --mtls"
        );
        let bad = T::try_parse_from(["t", "--brand", "Not OK"]).unwrap();
        assert!(config(&bad.a).is_err());
        let bad = T::try_parse_from(["t", "--datacenter", "nowhere-1"]).unwrap();
        assert!(config(&bad.a).is_err());
    }
}
